//! The users domain's value types, parsed once at the edge (parse, don't validate): an
//! [`Email`] is always normalised and plausible, a [`Password`] always within the length
//! policy. Neither prints its content in `Debug`, so neither can end up in a log by accident.

use std::fmt;

/// Why a string is not an acceptable email address or password; the text tells the client
/// what to fix and never repeats the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// A normalised email address: trimmed, lower-cased, `local@domain.tld`, at most 254 characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// The longest address SMTP can carry (RFC 5321's path limit minus the angle brackets).
    pub const MAX_LEN: usize = 254;
    /// The longest local part (RFC 5321).
    const MAX_LOCAL_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(Invalid("an email address is required"));
        }
        if email.chars().count() > Self::MAX_LEN {
            return Err(Invalid("an email address has at most 254 characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(Invalid("an email address looks like name@example.com"));
        };
        if local.is_empty() || local.chars().count() > Self::MAX_LOCAL_LEN {
            return Err(Invalid("the part before the @ must have 1 to 64 characters"));
        }
        if local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '"')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(Invalid("the part before the @ holds characters an address cannot have"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let well_formed = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.chars().count() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        let tld = labels.last().copied().unwrap_or_default();
        if !well_formed || tld.chars().count() < 2 || !tld.chars().all(char::is_alphabetic) {
            return Err(Invalid("the part after the @ must be a domain such as example.com"));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

/// A password that meets the policy: 8 to 128 characters, kept exactly as typed (no trimming,
/// so what the user typed is what is hashed).
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_LEN: usize = 8;
    /// An upper bound keeps hashing cost predictable and rejects pasted garbage.
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw.chars().count() {
            n if n < Self::MIN_LEN => Err(Invalid("a password needs at least 8 characters")),
            n if n > Self::MAX_LEN => Err(Invalid("a password has at most 128 characters")),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let longest = format!("{}@{}.{}.{}.com", "a".repeat(64), "b".repeat(61), "c".repeat(61), "d".repeat(61));
        assert_eq!(longest.len(), 254);
        let too_long = format!("{}@{}.{}.{}.com", "a".repeat(64), "b".repeat(62), "c".repeat(61), "d".repeat(61));
        let cases: &[(&str, Option<&str>)] = &[
            ("ada@example.com", Some("ada@example.com")),
            ("  Ada.Lovelace@Example.COM \n", Some("ada.lovelace@example.com")),
            ("first+tag@sub.example.co.uk", Some("first+tag@sub.example.co.uk")),
            ("zoë@exämple.de", Some("zoë@exämple.de")),
            (&longest, Some(longest.as_str())),
            ("", None),
            ("   ", None),
            ("ada", None),
            ("ada@", None),
            ("@example.com", None),
            ("ada@example", None),
            ("ada@example.", None),
            ("ada@.com", None),
            ("ada@example..com", None),
            ("ada@-example.com", None),
            ("ada@example.c", None),
            ("ada@example.c0m", None),
            ("ada@@example.com", None),
            ("a@b@example.com", None),
            ("ad a@example.com", None),
            ("ada@exa mple.com", None),
            (".ada@example.com", None),
            ("ada.@example.com", None),
            ("a..da@example.com", None),
            ("ada@example.com\u{0}", None),
            (&long_local, None),
            (&too_long, None),
        ];
        for (input, expected) in cases {
            let parsed = Email::parse(input).ok();
            assert_eq!(parsed.as_ref().map(Email::as_str), *expected, "input {input:?}");
        }
    }

    #[test]
    fn passwords_are_measured_in_characters() {
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("1234567", false),
            ("12345678", true),
            ("        ", true),
            ("ééééééé", false), // 7 characters, 14 bytes
            ("éééééééé", true),
            (&"x".repeat(128), true),
            (&"x".repeat(129), false),
            (&"é".repeat(128), true), // 256 bytes but 128 characters
        ];
        for (input, ok) in cases {
            assert_eq!(Password::parse(input).is_ok(), *ok, "input of {} characters", input.chars().count());
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let email = Email::parse("ada@example.com").unwrap();
        let password = Password::parse("correct horse").unwrap();
        assert!(!format!("{email:?} {password:?}").contains("ada"));
        assert!(!format!("{password:?}").contains("horse"));
    }
}
