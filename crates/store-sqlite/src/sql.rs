//! Helpers shared by the database and the log: portable SQL rewriting, value conversion and
//! error classification.

use rusqlite::{
    ErrorCode,
    types::{ToSql, ToSqlOutput, ValueRef},
};
use weir_core::db::{Error, Value};

/// Rewrites portable `$1, $2, …` parameters into SQLite's numbered `?1, ?2, …`.
///
/// SQLite would accept `$1` too, but as a *named* parameter numbered by first appearance, so
/// `WHERE a = $2 AND b = $1` would bind the wrong values. Quoted text and comments are copied
/// untouched so that a `$` inside a string literal is left alone.
pub(crate) fn rewrite_params(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // Copying whole runs of ASCII-delimited slices keeps multi-byte UTF-8 intact.
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                i += 1;
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push_str(&sql[copied..i]);
                out.push('?');
                i += 1;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    out
}

/// Borrows a [`Value`] as a SQLite parameter without copying it.
pub(crate) struct Param<'a>(pub &'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// Converts a column into a [`Value`] by its storage class.
pub(crate) fn to_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Classifies a SQLite error for callers of the database port.
pub(crate) fn map_err(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        let text = message.clone().unwrap_or_else(|| e.to_string());
        return match failure.code {
            ErrorCode::ConstraintViolation
                if matches!(
                    failure.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                Error::UniqueViolation(text)
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::FileLockingProtocolFailed => Error::Unavailable(text),
            _ => Error::Other(text),
        };
    }
    Error::Other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_parameters_outside_quotes_and_comments() {
        let cases = [
            ("SELECT $1", "SELECT ?1"),
            ("a = $2 AND b = $1", "a = ?2 AND b = ?1"),
            ("x = '$1' AND y = $1", "x = '$1' AND y = ?1"),
            ("\"col$1\" = $10", "\"col$1\" = ?10"),
            ("-- $1\nSELECT $1", "-- $1\nSELECT ?1"),
            ("/* $1 */ $2", "/* $1 */ ?2"),
            ("'é$1' || $3 || 'ü'", "'é$1' || ?3 || 'ü'"),
            ("price$", "price$"),
            ("'unterminated $1", "'unterminated $1"),
        ];
        for (input, expected) in cases {
            assert_eq!(rewrite_params(input), expected, "{input}");
        }
    }
}
