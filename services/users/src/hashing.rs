//! Password hashing with Argon2id, kept off the async workers and bounded in memory.
//!
//! One Argon2id hash with the default (OWASP) parameters takes ~19 MiB and tens of
//! milliseconds of CPU. Run inline it would stall a Tokio worker; run without a bound, a burst of
//! sign-ups would allocate 19 MiB each at once. So every hash and verification runs on the
//! blocking pool, and only after taking one of `concurrency` permits. The permit moves into the
//! blocking task, so a request that is cancelled while its hash runs still holds its permit
//! until the memory is freed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use argon2::{
    Argon2,
    password_hash::{self, PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use tokio::sync::Semaphore;

use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("password hashing failed: {0}")]
    Hash(password_hash::Error),
    #[error("the stored password hash is not a valid PHC string: {0}")]
    Stored(password_hash::phc::Error),
    #[error("the hashing task panicked or was cancelled")]
    Task(#[from] tokio::task::JoinError),
}

/// Hashes and verifies passwords on the blocking pool, at most `concurrency` at a time.
/// Cheap to clone; clones share the permits.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A hash of a random password, made with the same parameters as real ones: logging in as
    /// an unknown user verifies against it, so the answer takes as long as for a known user.
    dummy: Arc<str>,
    busy: Arc<AtomicUsize>,
    /// The most hashes ever running at once (what the tests check the bound with).
    peak: Arc<AtomicUsize>,
}

impl Hasher {
    /// A hasher allowing `concurrency` (at least 1) hashes at once. Computes the dummy hash, so
    /// it costs one hash.
    pub async fn new(concurrency: usize) -> Result<Self, Error> {
        let mut hasher = Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::from(""),
            busy: Arc::default(),
            peak: Arc::default(),
        };
        let random: [u8; 32] = rand::random();
        hasher.dummy = hasher.blocking("hash", move || hash(&random)).await??.into();
        Ok(hasher)
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) of `password` with a
    /// fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        self.blocking("hash", move || hash(password.as_bytes())).await?
    }

    /// Whether `password` matches `stored`. With no stored hash (an unknown user) it verifies
    /// against the dummy hash and answers `false`, taking as long as a real verification.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Error> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy.to_string());
        let matches = self
            .blocking("verify", move || {
                let parsed = PasswordHash::new(&stored).map_err(Error::Stored)?;
                match Argon2::default().verify_password(password.as_bytes(), &parsed) {
                    Ok(()) => Ok(true),
                    Err(password_hash::Error::PasswordInvalid) => Ok(false),
                    Err(e) => Err(Error::Hash(e)),
                }
            })
            .await??;
        Ok(known && matches)
    }

    #[cfg(test)]
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (busy, peak) = (self.busy.clone(), self.peak.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now_busy = busy.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_busy, Ordering::SeqCst);
            metrics::gauge!("weir_users_hashes_in_progress").increment(1.0);
            let started = Instant::now();
            let result = work();
            metrics::histogram!("weir_users_hash_seconds", "operation" => operation)
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("weir_users_hashes_in_progress").decrement(1.0);
            busy.fetch_sub(1, Ordering::SeqCst);
            result
        });
        Ok(task.await?)
    }
}

fn hash(password: &[u8]) -> Result<String, Error> {
    // `Argon2::default()` is Argon2id v19 with m=19 MiB, t=2, p=1: OWASP's recommendation.
    Argon2::default().hash_password(password).map(|h| h.to_string()).map_err(Error::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_the_dummy_never_matches() {
        let hasher = Hasher::new(2).await.unwrap();
        let stored = hasher.hash(Password::parse("correct horse").unwrap()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(hasher.verify("correct horse".into(), Some(stored.clone())).await.unwrap());
        assert!(!hasher.verify("wrong horse".into(), Some(stored.clone())).await.unwrap());
        assert!(!hasher.verify("correct horse".into(), None).await.unwrap());
        assert!(hasher.verify("x".into(), Some("not a phc string".into())).await.is_err());
        let again = hasher.hash(Password::parse("correct horse").unwrap()).await.unwrap();
        assert_ne!(stored, again, "every hash has its own salt");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_hashes_run_at_once_than_permitted() {
        let hasher = Hasher::new(1).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(Password::parse(&format!("password{i}")).unwrap()).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(hasher.peak(), 1);
    }
}
