//! The notifications service: tells a user how their order ended and that their document is
//! ready — exactly one notification per outcome (an order completed or cancelled, a document
//! classified or failed), in-app and by email over SMTP, as the user's preferences say.
//!
//! It learns contacts (sealed email addresses) and preferences from the `users` topic and
//! outcomes from the `orders`, `doc.classified` and `doc.processed` topics ([`consume`]); a background task delivers the emails with
//! timeouts, retries and a circuit breaker ([`sender`]); `GET /v1/notifications` lists the
//! caller's in-app notifications ([`api`]). It is not a general messaging system: it sends
//! nothing but these outcomes, and it never reads another service's tables.

mod api;
mod consume;
mod sender;
mod text;

use std::{sync::Arc, time::Duration};

use lettre::message::Mailbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use utoipa_axum::router::OpenApiRouter;
use weir_contracts::topics;
use weir_core::{
    Kernel, Router, RouterOptions,
    db::{Migration, migrate},
    pii::Sealer,
};

pub use api::{NotificationPage, NotificationView};

/// The consumer group of both subscriptions, the inbox's consumer name and the migrations' owner.
const NAME: &str = "notifications";

/// Where and how to send email.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// The sender, e.g. `Weir <weir@example.com>`.
    pub from: String,
    /// Bound on one delivery: connecting, the SMTP dialogue and the message.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Opens the sealed email addresses of `user_registered`.
    pub sealer: Sealer,
    /// `None` disables email: notifications are in-app only.
    pub smtp: Option<SmtpConfig>,
    pub router: RouterOptions,
}

/// How the email sender retries; the defaults suit production (see [`Service::with_delivery`]).
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts per email before it is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (with jitter) up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// How often the sender looks for due emails when nothing wakes it.
    pub poll_interval: Duration,
    /// Failures in a row that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before one probe.
    pub breaker_cool_down: Duration,
    /// Emails read per query.
    pub batch: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(1),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
            batch: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the SMTP sender {0:?} is not an address such as `Weir <weir@example.com>`")]
    InvalidFrom(String),
    #[error(transparent)]
    Db(#[from] weir_core::db::Error),
    #[error(transparent)]
    Bus(#[from] weir_core::bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The service; build it, mount its [`routes`](Self::routes), then [`run`](Self::run) it.
pub struct Service {
    kernel: Kernel,
    config: Config,
    from: Option<Mailbox>,
    delivery: DeliveryPolicy,
    wake_sender: Arc<Notify>,
}

impl Service {
    /// Creates or migrates the service's tables; starts nothing.
    pub async fn build(kernel: Kernel, config: Config) -> Result<Self> {
        let from = match &config.smtp {
            Some(smtp) => Some(smtp.from.parse::<Mailbox>().map_err(|_| Error::InvalidFrom(smtp.from.clone()))?),
            None => None,
        };
        migrate(kernel.db.as_ref(), NAME, &MIGRATIONS).await?;
        Ok(Self { kernel, config, from, delivery: DeliveryPolicy::default(), wake_sender: Arc::new(Notify::new()) })
    }

    /// Replaces the email retry policy (tests shorten it).
    pub fn with_delivery(mut self, delivery: DeliveryPolicy) -> Self {
        self.delivery = delivery;
        self
    }

    /// `GET /v1/notifications` and `POST /v1/notifications/{id}/read`.
    pub fn routes(&self) -> OpenApiRouter {
        api::routes(self.kernel.db.clone())
    }

    /// Consumes `users` and `orders`, relays the outbox and sends emails until `shutdown`;
    /// then drains the consumers, lets an email in flight finish, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let shared = consume::Shared { email_enabled: self.from.is_some(), wake_sender: self.wake_sender.clone() };
        let router = Router::new(self.kernel.clone(), self.config.router.clone())
            .route(topics::USERS, NAME, consume::UsersHandler(shared.clone()))
            .route(topics::ORDERS, NAME, consume::OutcomesHandler(shared.clone()))
            .route(topics::DOC_PROCESSED, NAME, consume::OutcomesHandler(shared.clone()))
            .route(topics::DOC_CLASSIFIED, NAME, consume::OutcomesHandler(shared));
        let sender = match (self.config.smtp, self.from) {
            (Some(smtp), Some(from)) => Some(tokio::spawn(
                sender::Sender {
                    db: self.kernel.db.clone(),
                    sealer: self.config.sealer,
                    smtp,
                    from,
                    policy: self.delivery,
                    wake: self.wake_sender,
                }
                .run(shutdown.clone()),
            )),
            _ => {
                warn!("no SMTP server configured: notifications are in-app only");
                None
            }
        };
        info!("notifications service running");
        let routed = self.kernel.run(router, shutdown).await;
        if let Some(sender) = sender
            && let Err(e) = sender.await
        {
            error!(error = %e, "the email sender task failed");
        }
        routed.map_err(Error::from)
    }
}

/// `contacts`: what the service knows of each user (NULL columns: not known yet; a row with
/// none is a placeholder that serialises the user's transactions). `notifications`: one row per outcome per
/// order; `email`/`in_app` are its channels, NULL while it waits for the user's registration.
/// `emails`: the delivery state of each email.
/// Version 2: notifications are about an order or a document, so `order_id` becomes `subject_id`.
const MIGRATIONS: [Migration; 2] = [
    Migration { version: 1, name: "contacts, notifications, emails", sqlite: SCHEMA, postgres: SCHEMA },
    Migration { version: 2, name: "notifications about any subject", sqlite: SUBJECTS, postgres: SUBJECTS },
];

const SUBJECTS: &str = "ALTER TABLE notifications RENAME COLUMN order_id TO subject_id";

const SCHEMA: &str = "
CREATE TABLE contacts (
    user_id TEXT PRIMARY KEY,
    email_sealed TEXT,
    email BIGINT,
    in_app BIGINT
);
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT,
    email BIGINT,
    in_app BIGINT,
    UNIQUE (order_id, kind)
);
CREATE INDEX notifications_by_user ON notifications (user_id, id);
CREATE TABLE emails (
    id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX emails_due ON emails (status, next_attempt_at)
";

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
