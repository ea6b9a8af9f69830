//! weir-bus-nats
