//! Money: integer minor units with a currency, never floats.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("a currency is three upper-case letters (ISO 4217), such as EUR; got {0:?}")]
    Currency(String),
    #[error("cannot add {0} and {1}: different currencies")]
    Mixed(Currency, Currency),
    #[error("the amount overflows")]
    Overflow,
}

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(Error::Currency(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("three ASCII letters")
    }
}

impl TryFrom<String> for Currency {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in minor units (cents) of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    /// Minor units: 1999 EUR is €19.99.
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { amount: 0, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, Error> {
        if self.currency != other.currency {
            return Err(Error::Mixed(self.currency, other.currency));
        }
        let amount = self.amount.checked_add(other.amount).ok_or(Error::Overflow)?;
        Ok(Money { amount, currency: self.currency })
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, Error> {
        let amount = self.amount.checked_mul(factor).ok_or(Error::Overflow)?;
        Ok(Money { amount, currency: self.currency })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount < 0 { "-" } else { "" };
        let abs = self.amount.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_parse_strictly() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        for bad in ["eur", "EU", "EURO", "", "E1R", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
        assert_eq!(serde_json::to_string(&Currency::USD).unwrap(), "\"USD\"");
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let a = Money::new(1999, Currency::EUR);
        assert_eq!(a.checked_mul(3).unwrap().amount, 5997);
        assert_eq!(a.checked_add(Money::new(1, Currency::EUR)).unwrap().amount, 2000);
        assert_eq!(a.checked_add(Money::new(1, Currency::USD)), Err(Error::Mixed(Currency::EUR, Currency::USD)));
        assert_eq!(Money::new(i64::MAX, Currency::EUR).checked_mul(2), Err(Error::Overflow));
        assert_eq!(a.to_string(), "19.99 EUR");
        assert_eq!(Money::new(-5, Currency::EUR).to_string(), "-0.05 EUR");
    }
}
