//! Sealing personal data (such as emails) before it goes into an event.
//!
//! Events are immutable and copied to every consumer, so personal data in clear would spread
//! to every log and broker. A [`Sealer`] encrypts it with XChaCha20-Poly1305 under a key that
//! only the services allowed to read it hold; the sealed text is `<key id>.<base64 nonce and
//! ciphertext>`, so keys can rotate. Dropping a key makes what it sealed unreadable.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, OsRng},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("sealed text is malformed")]
    Malformed,
    #[error("no key {0:?} to open this sealed text")]
    UnknownKey(String),
    #[error("sealed text does not open with its key (tampered or wrong key)")]
    Tampered,
}

/// Seals and opens personal data; cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    active: String,
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("active", &self.active).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer whose active key is `key` (32 bytes) with id `key_id`.
    pub fn new(key_id: impl Into<String>, key: &[u8; 32]) -> Self {
        let active = key_id.into();
        Self { keys: vec![(active.clone(), XChaCha20Poly1305::new(key.into()))], active }
    }

    /// A fresh random 32-byte key.
    pub fn random_key() -> [u8; 32] {
        XChaCha20Poly1305::generate_key(&mut OsRng).into()
    }

    /// Also opens text sealed with an older key.
    pub fn with_old_key(mut self, key_id: impl Into<String>, key: &[u8; 32]) -> Self {
        self.keys.push((key_id.into(), XChaCha20Poly1305::new(key.into())));
        self
    }

    pub fn seal(&self, clear: &str) -> String {
        let cipher = &self.keys[0].1;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut sealed = nonce.to_vec();
        sealed.extend(cipher.encrypt(&nonce, clear.as_bytes()).expect("XChaCha20-Poly1305 encrypts any length"));
        format!("{}.{}", self.active, URL_SAFE_NO_PAD.encode(sealed))
    }

    pub fn open(&self, sealed: &str) -> Result<String, Error> {
        let (key_id, body) = sealed.rsplit_once('.').ok_or(Error::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::Malformed)?;
        if bytes.len() < 24 {
            return Err(Error::Malformed);
        }
        let (_, cipher) =
            self.keys.iter().find(|(id, _)| id == key_id).ok_or_else(|| Error::UnknownKey(key_id.to_owned()))?;
        let (nonce, ciphertext) = bytes.split_at(24);
        let clear = cipher.decrypt(XNonce::from_slice(nonce), ciphertext).map_err(|_| Error::Tampered)?;
        String::from_utf8(clear).map_err(|_| Error::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_tampering() {
        let sealer = Sealer::new("k1", &Sealer::random_key());
        let sealed = sealer.seal("ada@example.com");
        assert!(!sealed.contains("ada"));
        assert_ne!(sealed, sealer.seal("ada@example.com"), "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed).unwrap(), "ada@example.com");

        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(sealer.open(std::str::from_utf8(&tampered).unwrap()), Err(Error::Tampered));
        assert_eq!(sealer.open("nonsense"), Err(Error::Malformed));
        assert_eq!(
            sealer.open("k2.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Err(Error::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn old_keys_still_open() {
        let old_key = Sealer::random_key();
        let sealed = Sealer::new("k1", &old_key).seal("x@y.z");
        let rotated = Sealer::new("k2", &Sealer::random_key()).with_old_key("k1", &old_key);
        assert_eq!(rotated.open(&sealed).unwrap(), "x@y.z");
        assert!(rotated.seal("x@y.z").starts_with("k2."));
    }
}
