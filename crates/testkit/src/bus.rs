//! The bus conformance suite.
