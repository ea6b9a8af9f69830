//! HMAC-SHA256 signatures over the canonical envelope, with key ids so keys can rotate: the
//! keyring signs with its active key and verifies with any key it holds.

use std::{collections::HashMap, fmt};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::event::{Event, Signature};

type HmacSha256 = Hmac<Sha256>;

/// Why an event's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the event is not signed")]
    Unsigned,
    #[error("the event is signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("the signature does not match the event (tampered with, or signed with another secret)")]
    Mismatch,
}

/// A set of named secrets: one active for signing, all usable for verifying.
#[derive(Clone)]
pub struct Keyring {
    active: String,
    keys: HashMap<String, Vec<u8>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring").field("active", &self.active).field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// A keyring whose active key is `secret`, known as `key_id`.
    pub fn new(key_id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        let active = key_id.into();
        let keys = HashMap::from([(active.clone(), secret.into())]);
        Self { active, keys }
    }

    /// A keyring with a fresh random 256-bit secret.
    pub fn generate(key_id: impl Into<String>) -> Self {
        Self::new(key_id, Self::random_secret())
    }

    pub fn random_secret() -> Vec<u8> {
        use rand::RngCore;
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        secret
    }

    /// Adds a key that verifies but does not sign (an old key during rotation).
    pub fn with_verify_key(mut self, key_id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        self.keys.insert(key_id.into(), secret.into());
        self
    }

    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    fn mac(&self, key_id: &str, event: &Event) -> Option<HmacSha256> {
        let secret = self.keys.get(key_id)?;
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&event.canonical_bytes());
        Some(mac)
    }

    /// Signs `event` with the active key, replacing any signature it had.
    pub fn sign(&self, event: &mut Event) {
        let mac = self.mac(&self.active, event).expect("the active key is in the ring");
        event.signature =
            Some(Signature { key_id: self.active.clone(), mac: URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()) });
    }

    /// Checks `event`'s signature, in constant time.
    pub fn verify(&self, event: &Event) -> Result<(), SignatureError> {
        let signature = event.signature.as_ref().ok_or(SignatureError::Unsigned)?;
        let mac =
            self.mac(&signature.key_id, event).ok_or_else(|| SignatureError::UnknownKey(signature.key_id.clone()))?;
        let claimed = URL_SAFE_NO_PAD.decode(&signature.mac).map_err(|_| SignatureError::Mismatch)?;
        mac.verify_slice(&claimed).map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        Event::new("orders", "order_created", "o-1", &json!({"qty": 1})).unwrap()
    }

    #[test]
    fn sign_then_verify() {
        let ring = Keyring::generate("k1");
        let mut e = event();
        assert_eq!(ring.verify(&e), Err(SignatureError::Unsigned));
        ring.sign(&mut e);
        assert_eq!(ring.verify(&e), Ok(()));
        // Survives the wire.
        let back = Event::from_message(&e.to_message()).unwrap();
        assert_eq!(ring.verify(&back), Ok(()));
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::generate("k1");
        let mut e = event();
        ring.sign(&mut e);
        let mut tampered = e.clone();
        tampered.data = bytes::Bytes::from_static(br#"{"qty":1000}"#);
        assert_eq!(ring.verify(&tampered), Err(SignatureError::Mismatch));
        let mut garbage = e.clone();
        garbage.signature.as_mut().unwrap().mac = "%%%".into();
        assert_eq!(ring.verify(&garbage), Err(SignatureError::Mismatch));
    }

    #[test]
    fn rotation_keeps_old_events_verifiable() {
        let old = Keyring::new("k1", b"old-secret".to_vec());
        let mut e = event();
        old.sign(&mut e);
        let new = Keyring::new("k2", b"new-secret".to_vec()).with_verify_key("k1", b"old-secret".to_vec());
        assert_eq!(new.verify(&e), Ok(()));
        let stranger = Keyring::new("k3", b"x".to_vec());
        assert_eq!(stranger.verify(&e), Err(SignatureError::UnknownKey("k1".into())));
    }

    #[test]
    fn debug_hides_secrets() {
        let ring = Keyring::new("k1", b"super-secret".to_vec());
        assert!(!format!("{ring:?}").contains("super"));
    }
}
