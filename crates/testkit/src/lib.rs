//! Test support shared by every Weir crate: the conformance suites that every transport
//! ([`bus`]) and every database adapter ([`stores`]) must pass, written once and instantiated
//! per adapter in this crate's `tests/`. Not for production code.

pub mod bus;
pub mod router;
pub mod stores;
