//! Classifies driver and pool errors into the port's [`Error`], so callers can tell a retryable
//! failure from a bug without knowing PostgreSQL.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;
use weir_core::db::Error;

/// Maps a driver error. The server's own message is kept (it names the constraint, column or
/// syntax problem), but never the connection string, which may hold a password.
pub(crate) fn from_postgres(error: tokio_postgres::Error) -> Error {
    if let Some(db) = error.as_db_error() {
        let message = match db.detail() {
            Some(detail) => format!("{} ({detail}) [SQLSTATE {}]", db.message(), db.code().code()),
            None => format!("{} [SQLSTATE {}]", db.message(), db.code().code()),
        };
        return classify(db.code(), message);
    }
    let message = with_causes(&error);
    // Without a server error this is a client-side failure: either the connection is gone
    // (closed, I/O, connect timeout), which a retry on a fresh connection may fix, or a local
    // problem such as a parameter that cannot be encoded, which it will not.
    if error.is_closed()
        || caused_by_io(&error)
        || message.starts_with("error connecting")
        || message.starts_with("timeout waiting for server")
    {
        Error::Unavailable(message)
    } else {
        Error::Other(message)
    }
}

/// Maps a pool checkout error.
pub(crate) fn from_pool(error: PoolError) -> Error {
    match error {
        PoolError::Backend(e) => from_postgres(e),
        PoolError::Timeout(kind) => Error::Unavailable(format!("timed out waiting for a connection ({kind:?})")),
        PoolError::Closed => Error::Unavailable("the connection pool is closed".into()),
        PoolError::NoRuntimeSpecified => Error::Other("the connection pool has no runtime".into()),
        PoolError::PostCreateHook(e) => Error::Unavailable(format!("connection setup failed: {e}")),
    }
}

fn classify(code: &SqlState, message: String) -> Error {
    let code_text = code.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        Error::UniqueViolation(message)
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        // Class 08: connection exceptions; 57P0x: the server is shutting down or starting;
        // 53300: too many connections. All of them pass if the caller retries later.
        || code_text.starts_with("08")
        || code_text.starts_with("57P0")
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        Error::Unavailable(message)
    } else {
        Error::Other(message)
    }
}

fn caused_by_io(error: &tokio_postgres::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The driver's top-level messages are terse ("error serializing parameter 1"); the useful
/// part is in the cause chain.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
