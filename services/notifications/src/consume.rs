//! The consumers: users' contacts and preferences from `users`; outcomes from `orders` (an
//! order completed or cancelled), `doc.classified` (a document is ready) and `doc.processed`
//! (a document could not be read).
//!
//! Each outcome becomes exactly one `notifications` row (unique per subject and kind), whatever
//! the number of deliveries or restated events. Its channels are decided once, from the user's
//! preferences at that moment, and an email to send becomes an `emails` row in the same
//! transaction; the [sender](crate::sender) delivers it later, outside any transaction.
//!
//! The `users` and `orders` topics are read independently, so an outcome may arrive before the
//! user's registration. It is then stored *parked* (no channels yet) and released by the
//! registration, instead of being retried until the user arrives: a lagging `users` consumer
//! can never push an outcome into the dead-letter queue.
//!
//! Parking must not race with the registration: on PostgreSQL (read committed) an outcome that
//! does not yet see the registration and a registration that does not yet see the parked
//! outcome could both commit, leaving it parked for ever. So every handler first *writes* the
//! user's `contacts` row (an upsert; a placeholder row for a user not registered yet), which
//! locks it: transactions about one user take turns, and the later one sees the earlier one's
//! rows. (SQLite serialises all writers anyway.)

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::{debug, info};
use uuid::Uuid;
use weir_contracts::{Contract, NotificationPreferencesChanged, Preferences, UserRegistered};
use weir_core::{Context, Event, Handler, HandlerError, Outgoing, Transaction};

use crate::{
    now_millis,
    text::{self, Outcome},
};

/// What both consumers share.
#[derive(Clone)]
pub(crate) struct Shared {
    /// Whether email can be sent at all; without SMTP, email is never chosen as a channel.
    pub email_enabled: bool,
    /// Wakes the email sender when an `emails` row may have been added.
    pub wake_sender: Arc<Notify>,
}

/// The channels of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Channels {
    email: bool,
    in_app: bool,
}

impl Shared {
    fn channels(&self, preferences: Preferences) -> Channels {
        Channels { email: preferences.email && self.email_enabled, in_app: preferences.in_app }
    }
}

/// Consumes `users`: registrations and preference changes.
pub(crate) struct UsersHandler(pub Shared);

#[async_trait]
impl Handler for UsersHandler {
    fn accepts(&self, kind: &str) -> bool {
        [UserRegistered::KIND, NotificationPreferencesChanged::KIND].contains(&kind)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(registered) = UserRegistered::decode(event) {
            let registered = registered?;
            self.registered(ctx.tx(), &registered).await?;
        } else if let Some(changed) = NotificationPreferencesChanged::decode(event) {
            let changed = changed?;
            // Registration and preference changes share the user's key, so a change normally
            // finds the contact; if it does not, the preferences wait for the registration.
            ctx.tx()
                .execute(
                    "INSERT INTO contacts (user_id, email, in_app) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, in_app = excluded.in_app",
                    &[
                        changed.user_id.to_string().into(),
                        changed.preferences.email.into(),
                        changed.preferences.in_app.into(),
                    ],
                )
                .await?;
            debug!(user_id = %changed.user_id, "notification preferences changed");
        }
        Ok(Vec::new())
    }
}

impl UsersHandler {
    async fn registered(&self, tx: &mut dyn Transaction, registered: &UserRegistered) -> Result<(), HandlerError> {
        let user_id = registered.user_id.to_string();
        // A restated registration only refreshes the address: preferences stored before it
        // come from a later change (same key, so same order), which must win. A placeholder
        // row (see the module docs) has none yet.
        tx.execute(
            "INSERT INTO contacts (user_id, email_sealed, email, in_app) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET email_sealed = excluded.email_sealed,
                 email = COALESCE(contacts.email, excluded.email), in_app = COALESCE(contacts.in_app, excluded.in_app)",
            &[
                user_id.as_str().into(),
                registered.email_sealed.as_str().into(),
                registered.preferences.email.into(),
                registered.preferences.in_app.into(),
            ],
        )
        .await?;
        let preferences = contact(tx, &user_id).await?.and_then(|c| c.preferences).unwrap_or(registered.preferences);
        let channels = self.0.channels(preferences);
        // Outcomes that arrived before the user: deliver them now.
        let parked = tx
            .query(
                "SELECT id, kind, title, body FROM notifications WHERE user_id = $1 AND in_app IS NULL ORDER BY id",
                &[user_id.as_str().into()],
            )
            .await?;
        for row in &parked {
            let (id, kind, title, body) = (row.text(0)?, row.text(1)?, row.text(2)?, row.text(3)?);
            tx.execute(
                "UPDATE notifications SET email = $1, in_app = $2 WHERE id = $3",
                &[channels.email.into(), channels.in_app.into(), id.into()],
            )
            .await?;
            let text = text::Text { title: title.to_owned(), body: body.to_owned() };
            deliver(&self.0, tx, id, &user_id, kind, &text, channels).await?;
        }
        if !parked.is_empty() {
            info!(user_id = %registered.user_id, released = parked.len(), "released notifications that waited for the user");
        }
        debug!(user_id = %registered.user_id, "contact stored");
        Ok(())
    }
}

/// Consumes the outcome topics (`orders`, `doc.processed`, `doc.classified`); every event that
/// is not an outcome ([`Outcome::from_event`]) is ignored.
pub(crate) struct OutcomesHandler(pub Shared);

#[async_trait]
impl Handler for OutcomesHandler {
    fn accepts(&self, kind: &str) -> bool {
        Outcome::KINDS.contains(&kind)
    }

    async fn handle(&self, event: &Event, ctx: &mut Context<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        if let Some(outcome) = Outcome::from_event(event) {
            let (user_id, outcome) = outcome?;
            self.outcome(ctx.tx(), user_id, &outcome).await?;
        }
        Ok(Vec::new())
    }
}

impl OutcomesHandler {
    async fn outcome(&self, tx: &mut dyn Transaction, user_id: Uuid, outcome: &Outcome) -> Result<(), HandlerError> {
        let subject = outcome.subject();
        let user = user_id.to_string();
        // Lock the user's contact first (see the module docs), then read it.
        tx.execute(
            "INSERT INTO contacts (user_id) VALUES ($1) ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id",
            &[user.as_str().into()],
        )
        .await?;
        // Known only once registered (with an address); until then the notification is parked.
        let channels = contact(tx, &user)
            .await?
            .filter(|c| c.registered)
            .and_then(|c| c.preferences)
            .map(|preferences| self.0.channels(preferences));
        let text = text::compose(outcome);
        let id = Uuid::now_v7().to_string();
        let inserted = tx
            .execute(
                "INSERT INTO notifications (id, user_id, subject_id, kind, title, body, created_at, email, in_app)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (subject_id, kind) DO NOTHING",
                &[
                    id.as_str().into(),
                    user.as_str().into(),
                    subject.to_string().into(),
                    outcome.kind().into(),
                    text.title.as_str().into(),
                    text.body.as_str().into(),
                    now_millis().into(),
                    channels.map(|c| c.email).into(),
                    channels.map(|c| c.in_app).into(),
                ],
            )
            .await?;
        if inserted == 0 {
            debug!(%subject, kind = outcome.kind(), "outcome already notified");
            return Ok(());
        }
        match channels {
            Some(channels) => deliver(&self.0, tx, &id, &user, outcome.kind(), &text, channels).await?,
            None => info!(%subject, %user_id, "the user is not known yet; the notification waits for them"),
        }
        Ok(())
    }
}

/// Puts a notification on its channels: the in-app one needs nothing more (its row is the
/// entry); email gets a row for the sender.
async fn deliver(
    shared: &Shared,
    tx: &mut dyn Transaction,
    notification_id: &str,
    user_id: &str,
    kind: &str,
    text: &text::Text,
    channels: Channels,
) -> Result<(), HandlerError> {
    if channels.in_app {
        metrics::counter!("weir_notifications_total", "kind" => kind.to_owned(), "channel" => "in_app").increment(1);
    }
    if channels.email {
        tx.execute(
            "INSERT INTO emails (id, notification_id, user_id, subject, body, status, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6) ON CONFLICT (notification_id) DO NOTHING",
            &[
                Uuid::now_v7().to_string().into(),
                notification_id.into(),
                user_id.into(),
                text.title.as_str().into(),
                text::email_body(text).into(),
                now_millis().into(),
            ],
        )
        .await?;
        // The row commits with this transaction, a moment from now; the sender looks twice.
        shared.wake_sender.notify_one();
    }
    Ok(())
}

struct Contact {
    /// Whether the registration (with the address) arrived.
    registered: bool,
    /// `None` until the registration or a change states them.
    preferences: Option<Preferences>,
}

async fn contact(tx: &mut dyn Transaction, user_id: &str) -> Result<Option<Contact>, HandlerError> {
    let rows =
        tx.query("SELECT email_sealed, email, in_app FROM contacts WHERE user_id = $1", &[user_id.into()]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let preferences = match (row.opt_i64(1)?, row.opt_i64(2)?) {
        (Some(email), Some(in_app)) => Some(Preferences { email: email != 0, in_app: in_app != 0 }),
        _ => None,
    };
    Ok(Some(Contact { registered: row.opt_text(0)?.is_some(), preferences }))
}
