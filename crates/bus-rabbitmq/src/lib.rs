//! RabbitMQ transport for Weir's bus ports (being written).
