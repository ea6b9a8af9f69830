//! Bearer-JWT authentication: [`Tokens`] issues and verifies access tokens; [`AuthUser`]
//! extracts the verified caller from `Authorization: Bearer <token>`.
//!
//! Tokens are HS256 JWTs with issuer, audience, expiry and a token id. The application puts
//! one [`Tokens`] value into request extensions (`axum::Extension`), so every service's
//! routes verify with the same key without holding it in their own state.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Problem;

const ISSUER: &str = "weir";
const AUDIENCE: &str = "weir-api";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: Uuid,
}

/// Issues and verifies access tokens; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("ttl", &self.inner.ttl).finish_non_exhaustive()
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: Duration,
}

impl Tokens {
    /// Tokens signed with `secret` (at least 32 random bytes) that live for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        assert!(secret.len() >= 32, "a token secret needs at least 32 bytes");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            inner: Arc::new(Inner {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
                ttl,
            }),
        }
    }

    /// Issues a token for `user_id`.
    pub fn issue(&self, user_id: Uuid) -> Issued {
        self.issue_at(user_id, now_secs())
    }

    /// Issues a token as if it were `iat` seconds after the epoch (tests make expired ones).
    pub fn issue_at(&self, user_id: Uuid, iat: u64) -> Issued {
        let claims = Claims {
            sub: user_id,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat,
            exp: iat + self.inner.ttl.as_secs(),
            jti: Uuid::now_v7(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.inner.encoding)
            .expect("HS256 signs any claims");
        Issued { token, expires_in: self.inner.ttl }
    }

    /// Verifies `token`; the problem says why it was refused.
    pub fn verify(&self, token: &str) -> Result<Claims, Problem> {
        jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation).map(|d| d.claims).map_err(
            |e| {
                Problem::unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the access token has expired; log in again at POST /v1/auth/token",
                    ErrorKind::InvalidSignature => "the access token's signature is not valid",
                    _ => "the access token is malformed or not for this API",
                })
            },
        )
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The authenticated caller. Extracting it answers 401 with a problem when the request has no
/// valid bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let tokens = parts.extensions.get::<Tokens>().ok_or_else(|| {
            Problem::internal(&std::io::Error::other(
                "no Tokens in request extensions: add Extension(tokens) to the app",
            ))
        })?;
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            Problem::unauthorized(
                "send an access token: `Authorization: Bearer <token>` (get one at POST /v1/auth/token)",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let claims = tokens.verify(token)?;
        // Later layers (rate limiting, logs) key on the caller.
        parts.extensions.insert(AuthUser { user_id: claims.sub });
        Ok(AuthUser { user_id: claims.sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_refuse_expired_and_forged_ones() {
        let tokens = Tokens::new(&[7u8; 32], Duration::from_secs(900));
        let user = Uuid::now_v7();
        let issued = tokens.issue(user);
        assert_eq!(tokens.verify(&issued.token).unwrap().sub, user);

        let expired = tokens.issue_at(user, now_secs() - 3600);
        assert!(tokens.verify(&expired.token).unwrap_err().detail.contains("expired"));

        let other = Tokens::new(&[8u8; 32], Duration::from_secs(900));
        assert!(other.verify(&issued.token).unwrap_err().detail.contains("signature"));
        assert_eq!(tokens.verify("not.a.token").unwrap_err().status, 401);
    }
}
