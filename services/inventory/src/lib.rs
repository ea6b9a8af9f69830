//! The inventory service (under construction).
