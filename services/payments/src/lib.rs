//! The payments service (under construction).
