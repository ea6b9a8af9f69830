//! weir-store-postgres
