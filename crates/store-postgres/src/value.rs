//! [`Value`] ↔ PostgreSQL's binary wire format.
//!
//! The port has five value kinds; PostgreSQL has many types. Parameters are encoded as the type
//! the server inferred for them (so `$1` compared with an `INT2` column is sent as an `INT2`,
//! with a range check), and result columns are decoded from the types a kernel table uses.
//! Anything else is refused with a message naming the type, never guessed at.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use weir_core::db::{Error, Row, Value};

use crate::error::with_causes;

type BoxError = Box<dyn StdError + Sync + Send>;

/// A [`Value`] borrowed as a statement parameter.
#[derive(Debug)]
pub(crate) struct Param<'a>(pub(crate) &'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let value = match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            value => value,
        };
        match (value, ty) {
            (Value::Int(v), &Type::INT8) => out.put_i64(*v),
            (Value::Int(v), &Type::INT4) => out.put_i32(narrow(*v, ty)?),
            (Value::Int(v), &Type::INT2) => out.put_i16(narrow(*v, ty)?),
            (Value::Int(v), &Type::OID) => out.put_u32(narrow(*v, ty)?),
            (Value::Int(v @ (0 | 1)), &Type::BOOL) => out.put_u8(*v as u8),
            // An integer bound to a float column is what SQLite would store too; the
            // conversion is exact for the magnitudes a counter or an amount reaches.
            (Value::Int(v), &Type::FLOAT8) => out.put_f64(*v as f64),
            (Value::Int(v), &Type::FLOAT4) => out.put_f32(*v as f32),
            (Value::Real(v), &Type::FLOAT8) => out.put_f64(*v),
            (Value::Real(v), &Type::FLOAT4) => {
                let narrow = *v as f32;
                if v.is_finite() && !narrow.is_finite() {
                    return Err(format!("{v} is out of range for float4").into());
                }
                out.put_f32(narrow)
            }
            (Value::Text(v), ty) if is_text(ty) || *ty == Type::JSON => out.put_slice(v.as_bytes()),
            (Value::Text(v), &Type::JSONB) => {
                // The binary JSONB format is a version byte followed by the JSON text.
                out.put_u8(1);
                out.put_slice(v.as_bytes());
            }
            (Value::Text(v), &Type::UUID) => {
                let uuid = uuid::Uuid::parse_str(v).map_err(|e| format!("{v:?} is not a UUID: {e}"))?;
                out.put_slice(uuid.as_bytes());
            }
            (Value::Blob(v), &Type::BYTEA) => out.put_slice(v),
            (value, ty) => {
                return Err(format!("cannot send {} as a parameter of type {ty}", kind(value)).into());
            }
        }
        Ok(IsNull::No)
    }

    // Every type is "accepted" here so that `to_sql` can give a message naming both the value
    // and the type; the driver's own refusal would only say "cannot convert".
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.to_sql(ty, out)
    }
}

fn narrow<T: TryFrom<i64>>(v: i64, ty: &Type) -> Result<T, BoxError> {
    T::try_from(v).map_err(|_| format!("{v} is out of range for {ty}").into())
}

fn is_text(ty: &Type) -> bool {
    matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    }
}

/// One decoded result column.
struct Column(Value);

impl<'a> FromSql<'a> for Column {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let value = match *ty {
            Type::INT8 => Value::Int(i64::from_be_bytes(fixed(raw)?)),
            Type::INT4 => Value::Int(i32::from_be_bytes(fixed(raw)?).into()),
            Type::INT2 => Value::Int(i16::from_be_bytes(fixed(raw)?).into()),
            Type::OID => Value::Int(u32::from_be_bytes(fixed(raw)?).into()),
            Type::BOOL => Value::Int((fixed::<1>(raw)?[0] != 0).into()),
            Type::FLOAT8 => Value::Real(f64::from_be_bytes(fixed(raw)?)),
            Type::FLOAT4 => Value::Real(f32::from_be_bytes(fixed(raw)?).into()),
            ref ty if is_text(ty) || *ty == Type::JSON => Value::Text(utf8(raw)?),
            Type::JSONB => match raw.split_first() {
                Some((1, json)) => Value::Text(utf8(json)?),
                _ => return Err("unsupported jsonb binary version".into()),
            },
            Type::UUID => Value::Text(uuid::Uuid::from_bytes(fixed(raw)?).to_string()),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            // What `SELECT pg_advisory_xact_lock(…)` or `pg_sleep` return: nothing.
            Type::VOID => Value::Null,
            ref ty => {
                return Err(format!(
                    "type {ty} has no weir Value; cast it in the SQL (e.g. `::bigint`, `::float8` or `::text`)"
                )
                .into());
            }
        };
        Ok(Column(value))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.try_into().map_err(|_| format!("expected {N} bytes, got {}", raw.len()).into())
}

fn utf8(raw: &[u8]) -> Result<String, BoxError> {
    Ok(std::str::from_utf8(raw)?.to_owned())
}

/// Decodes a whole row; a column of an unsupported type is an [`Error::Decode`] naming it.
pub(crate) fn decode_row(row: &tokio_postgres::Row) -> Result<Row, Error> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, Column>(i).map(|c| c.0).map_err(|e| {
                let name = row.columns()[i].name();
                Error::Decode(format!("column {i} (`{name}`): {}", with_causes(&e)))
            })
        })
        .collect::<Result<_, _>>()
        .map(Row)
}
