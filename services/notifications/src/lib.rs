//! The notifications service (under construction).
