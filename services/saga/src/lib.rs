//! The saga service (under construction).
