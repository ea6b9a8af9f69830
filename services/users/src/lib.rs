//! The users service (under construction).
