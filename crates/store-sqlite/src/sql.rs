//! Helpers shared by the database and the log: portable SQL rewriting, value conversion and
//! error classification.

use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode,
    config::DbConfig,
    types::{ToSql, ToSqlOutput, ValueRef},
};
use weir_core::db::{Error, Value};

/// How long a statement waits for another process's write lock before failing as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection of the database and the log is set up with.
///
/// The query planner stability guarantee matters for speed: rusqlite clears a statement's
/// bindings when it goes back to the statement cache, and SQLite expires a statement whose plan
/// may depend on a bound value (`LIMIT ?`, `col = ?` under an `ORDER BY` or a join) when its
/// bindings are cleared, so without it such statements were compiled again on every use
/// (`sqlite3Reprepare`, about 4% of all CPU under load). Weir's queries are indexed lookups
/// whose plans do not depend on the values.
///
/// Temporary storage in memory matters too: every savepoint (the database's group commit nests
/// one per logical transaction, the router one per message) copies each page it first touches
/// into a statement journal, which by default spills to a temporary *file* past 64 KiB — under
/// load that was a tenth of all CPU in `write` calls for a journal that is never read unless a
/// savepoint rolls back, and is thrown away at the commit.
pub(crate) fn configure(conn: &Connection, statement_cache: usize) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(statement_cache);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// The least time between two physical commits of one file (the database's flusher, the log's
/// writer). Each commit writes every page its batch touched and syncs: committing as soon as
/// anything is ready made a busy file commit thousands of times a second, rewriting the same hot
/// pages each time, so the work grew with the time available rather than with the load. A
/// commit after a quiet spell is not delayed; under load, what arrives meanwhile joins the batch.
pub(crate) const COMMIT_SPACING: Duration = Duration::from_millis(1);

/// Waits out what is left of [`COMMIT_SPACING`] since `last`.
pub(crate) fn space_commits(last: std::time::Instant) {
    if let Some(left) = COMMIT_SPACING.checked_sub(last.elapsed()) {
        std::thread::sleep(left);
    }
}

/// Runs a transaction-control statement (`BEGIN`, `SAVEPOINT`, `RELEASE`, `COMMIT`, …) from the
/// statement cache: every logical transaction runs several, and parsing them anew each time
/// showed in profiles.
pub(crate) fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

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
    fn cached_statements_are_not_compiled_again_on_every_use() {
        let conn = Connection::open_in_memory().unwrap();
        configure(&conn, 16).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER, id INTEGER PRIMARY KEY); CREATE INDEX t_k ON t (k, id);")
            .unwrap();
        // Shapes whose plans SQLite would otherwise tie to the bound values.
        let shapes = [
            "SELECT id FROM t WHERE k = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            "SELECT id FROM t WHERE k = ?1 ORDER BY id DESC LIMIT ?2",
        ];
        for sql in shapes {
            for round in 0..5i64 {
                let mut stmt = conn.prepare_cached(sql).unwrap();
                let params: Vec<i64> = (0..stmt.parameter_count() as i64).map(|p| p + round).collect();
                stmt.query(rusqlite::params_from_iter(params)).unwrap().next().unwrap();
                let recompiled = stmt.get_status(rusqlite::StatementStatus::RePrepare);
                assert_eq!(recompiled, 0, "{sql} was compiled again in round {round}");
            }
        }
    }

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
