//! The orders service (under construction).
