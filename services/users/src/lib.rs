//! The users service: sign-up, log-in and notification preferences. It owns the `users` table
//! (normalised email, Argon2id password hash, preferences), issues access tokens for valid
//! credentials, and announces `user_registered` and `notification_preferences_changed` on the
//! `users` topic through its outbox — with the email sealed, never in clear. It does not send
//! notifications, verify email addresses or reset passwords, and it consumes no topic.

mod api;
pub mod domain;
mod hashing;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use weir_core::{
    Kernel,
    db::{self, Migration},
    pii::Sealer,
};
use weir_http::Tokens;

pub use domain::{Email, Password};

/// The name of this service: its event source, consumer group and migration owner.
pub const SERVICE: &str = "users";

/// The service's own tables.
pub const MIGRATIONS: [Migration; 1] = [Migration {
    version: 1,
    name: "users",
    sqlite: "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        email_notifications BIGINT NOT NULL,
        in_app_notifications BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
    postgres: "CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        email_notifications BIGINT NOT NULL,
        in_app_notifications BIGINT NOT NULL,
        created_at BIGINT NOT NULL)",
}];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Hashing(#[from] hashing::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the users service needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Issues the access tokens handed out at log-in (the same `Tokens` the app verifies with).
    pub tokens: Tokens,
    /// Seals emails before they go into events.
    pub sealer: Sealer,
    /// Password hashes computed at once; each takes ~19 MiB, so this bounds memory too.
    pub hash_concurrency: usize,
}

impl Config {
    /// A config with `hash_concurrency` set to the number of available cores.
    pub fn new(tokens: Tokens, sealer: Sealer) -> Self {
        let hash_concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { tokens, sealer, hash_concurrency }
    }
}

/// The users service; see the crate docs.
pub struct Service {
    kernel: Kernel,
    state: api::State,
}

impl Service {
    /// Creates or upgrades the `users` table and prepares the password hasher (one hash, for
    /// the dummy that keeps log-in timing uniform). Starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        db::migrate(kernel.db.as_ref(), SERVICE, &MIGRATIONS).await?;
        let hasher = hashing::Hasher::new(config.hash_concurrency).await?;
        let state = api::State(Arc::new(api::Shared {
            db: kernel.db.clone(),
            outbox: kernel.outbox.clone(),
            tokens: config.tokens,
            sealer: config.sealer,
            hasher,
        }));
        Ok(Self { kernel, state })
    }

    /// `POST /v1/users`, `POST /v1/auth/token`, `GET /v1/users/me`,
    /// `PUT /v1/users/me/preferences`, with their OpenAPI descriptions.
    pub fn routes(&self) -> OpenApiRouter {
        api::routes(self.state.clone())
    }

    /// Relays the outbox (the events the routes write) until `shutdown`; then finishes the
    /// relay round in progress and returns. The service consumes nothing, so there is no router
    /// work to drain.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        info!(service = SERVICE, "running");
        // Not `kernel.run(Router::new(..))`: a router with no routes returns at once instead of
        // waiting for `shutdown`, and `kernel.run` would then stop the relay straight away.
        self.kernel.outbox.relay(self.kernel.db.clone(), self.kernel.publisher.clone()).run(shutdown).await;
        info!(service = SERVICE, "stopped");
        Ok(())
    }
}
