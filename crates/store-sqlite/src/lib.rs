//! weir-store-sqlite
