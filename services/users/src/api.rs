//! The HTTP routes. Each one parses its body into domain types first, so nothing below the
//! parsing sees an unchecked email or password; every write and the event announcing it commit
//! in one transaction (the outbox), so an event exists exactly when its row does.

use std::sync::Arc;

use axum::{extract, http::StatusCode, http::header, response::IntoResponse};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_contracts::{Contract, NotificationPreferencesChanged, Preferences, UserRegistered};
use weir_core::{Db, Event, pii::Sealer, store, store::outbox::Outbox};
use weir_http::{AuthUser, Json, Problem, Tokens, TraceContext};

use crate::{
    SERVICE,
    domain::{Email, Password},
    hashing::Hasher,
};

/// The same answer for an unknown email and a wrong password, so log-in reveals neither.
const BAD_CREDENTIALS: &str = "the email or password is not correct";
const TAG: &str = "users";

#[derive(Clone)]
pub(crate) struct State(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub db: Db,
    pub outbox: Outbox,
    pub tokens: Tokens,
    pub sealer: Sealer,
    pub hasher: Hasher,
}

pub(crate) fn routes(state: State) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(issue_token))
        .routes(routes!(me))
        .routes(routes!(update_preferences))
        .with_state(state)
}

/// A sign-up.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Registration {
    /// Compared case-insensitively; stored trimmed and lower-cased.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub user_id: Uuid,
    /// The normalised email.
    pub email: String,
}

/// Credentials to exchange for an access token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken {
    /// Send it as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// How a user wants to hear about outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreferencesBody {
    /// Notify by email.
    pub email: bool,
    /// Notify in the app.
    pub in_app: bool,
}

impl From<PreferencesBody> for Preferences {
    fn from(p: PreferencesBody) -> Self {
        Preferences { email: p.email, in_app: p.in_app }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user_id: Uuid,
    pub email: String,
    pub preferences: PreferencesBody,
}

/// Registers a user and announces `user_registered` (email sealed).
#[utoipa::path(
    post, path = "/v1/users", tag = TAG,
    request_body = Registration,
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email or password", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    extract::State(State(state)): extract::State<State>,
    trace: TraceContext,
    Json(body): Json<Registration>,
) -> Result<impl IntoResponse, Problem> {
    let (email, password) = match (Email::parse(&body.email), Password::parse(&body.password)) {
        (Ok(email), Ok(password)) => (email, password),
        (email, password) => {
            metrics::counter!("weir_users_registrations_total", "outcome" => "invalid").increment(1);
            let mut problem = Problem::invalid("the registration is not valid; see `errors` for what to fix");
            if let Err(e) = email {
                problem = problem.with_field("email", e.0);
            }
            if let Err(e) = password {
                problem = problem.with_field("password", e.0);
            }
            return Err(problem);
        }
    };
    // Spare the hash (and its 19 MiB) when the answer is already known; the insert below still
    // decides races.
    let taken = state.db.query("SELECT 1 FROM users WHERE email = $1", &[email.as_str().into()]).await?;
    if !taken.is_empty() {
        return Err(email_taken());
    }
    let password_hash = state.hasher.hash(password).await.map_err(|e| Problem::internal(&e))?;

    let user_id = Uuid::now_v7();
    let preferences = Preferences::default();
    let mut tx = state.db.begin().await?;
    let inserted = tx
        .execute(
            "INSERT INTO users (id, email, password_hash, email_notifications, in_app_notifications, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (email) DO NOTHING",
            &[
                user_id.to_string().into(),
                email.as_str().into(),
                password_hash.into(),
                preferences.email.into(),
                preferences.in_app.into(),
                store::now_millis().into(),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(email_taken()); // Dropping `tx` rolls back: nothing written, nothing emitted.
    }
    let event = UserRegistered { user_id, email_sealed: state.sealer.seal(email.as_str()), preferences };
    state.outbox.enqueue(tx.as_mut(), UserRegistered::TOPIC, vec![traced(event.to_event(SERVICE), trace)]).await?;
    tx.commit().await?;
    state.outbox.wake();

    metrics::counter!("weir_users_registrations_total", "outcome" => "registered").increment(1);
    info!(%user_id, "user registered");
    let body = Registered { user_id, email: email.as_str().to_owned() };
    Ok((StatusCode::CREATED, [(header::LOCATION, "/v1/users/me")], Json(body)))
}

fn email_taken() -> Problem {
    metrics::counter!("weir_users_registrations_total", "outcome" => "duplicate").increment(1);
    Problem::conflict("an account with this email already exists; log in at POST /v1/auth/token")
        .with_field("email", "already registered")
}

/// Exchanges an email and password for a bearer access token.
#[utoipa::path(
    post, path = "/v1/auth/token", tag = TAG,
    request_body = Credentials,
    responses(
        (status = 200, description = "An access token", body = AccessToken),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn issue_token(
    extract::State(State(state)): extract::State<State>,
    Json(body): Json<Credentials>,
) -> Result<Json<AccessToken>, Problem> {
    // An email that does not parse cannot belong to anyone; it still costs a verification so
    // that its answer takes as long as any other.
    let user = match Email::parse(&body.email) {
        Ok(email) => state
            .db
            .query("SELECT id, password_hash FROM users WHERE email = $1", &[email.as_str().into()])
            .await?
            .first()
            .map(|row| Ok::<_, weir_core::db::Error>((row.text(0)?.to_owned(), row.text(1)?.to_owned())))
            .transpose()?,
        Err(_) => None,
    };
    let (user_id, stored) = user.unzip();
    let matches = state.hasher.verify(body.password, stored).await.map_err(|e| Problem::internal(&e))?;
    let user_id = match user_id.filter(|_| matches) {
        Some(id) => parse_id(&id)?,
        None => {
            metrics::counter!("weir_users_logins_total", "outcome" => "refused").increment(1);
            warn!("log-in refused");
            return Err(Problem::unauthorized(BAD_CREDENTIALS));
        }
    };
    let issued = state.tokens.issue(user_id);
    metrics::counter!("weir_users_logins_total", "outcome" => "issued").increment(1);
    info!(%user_id, "access token issued");
    Ok(Json(AccessToken { access_token: issued.token, token_type: "Bearer", expires_in: issued.expires_in.as_secs() }))
}

/// The caller's account.
#[utoipa::path(
    get, path = "/v1/users/me", tag = TAG,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = Me),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The token's user does not exist", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn me(extract::State(State(state)): extract::State<State>, caller: AuthUser) -> Result<Json<Me>, Problem> {
    let rows = state
        .db
        .query(
            "SELECT email, email_notifications, in_app_notifications FROM users WHERE id = $1",
            &[caller.user_id.to_string().into()],
        )
        .await?;
    let row = rows.first().ok_or_else(no_such_user)?;
    Ok(Json(Me {
        user_id: caller.user_id,
        email: row.text(0)?.to_owned(),
        preferences: PreferencesBody { email: row.i64(1)? != 0, in_app: row.i64(2)? != 0 },
    }))
}

/// Replaces the caller's notification preferences; announces `notification_preferences_changed`
/// when they actually change.
#[utoipa::path(
    put, path = "/v1/users/me/preferences", tag = TAG,
    security(("bearer" = [])),
    request_body = PreferencesBody,
    responses(
        (status = 200, description = "The preferences now in force", body = PreferencesBody),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The token's user does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is not {email: bool, in_app: bool}", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_preferences(
    extract::State(State(state)): extract::State<State>,
    caller: AuthUser,
    trace: TraceContext,
    Json(body): Json<PreferencesBody>,
) -> Result<Json<PreferencesBody>, Problem> {
    let user_id = caller.user_id;
    let id = user_id.to_string();
    let mut tx = state.db.begin().await?;
    // Only a real change is a fact worth announcing: repeating a PUT emits nothing.
    let changed = tx
        .execute(
            "UPDATE users SET email_notifications = $2, in_app_notifications = $3
             WHERE id = $1 AND (email_notifications <> $2 OR in_app_notifications <> $3)",
            &[id.as_str().into(), body.email.into(), body.in_app.into()],
        )
        .await?;
    if changed == 0 {
        let exists = !tx.query("SELECT 1 FROM users WHERE id = $1", &[id.into()]).await?.is_empty();
        return if exists { Ok(Json(body)) } else { Err(no_such_user()) };
    }
    let event = NotificationPreferencesChanged { user_id, preferences: body.into() };
    state
        .outbox
        .enqueue(tx.as_mut(), NotificationPreferencesChanged::TOPIC, vec![traced(event.to_event(SERVICE), trace)])
        .await?;
    tx.commit().await?;
    state.outbox.wake();
    metrics::counter!("weir_users_preference_changes_total").increment(1);
    info!(%user_id, email = body.email, in_app = body.in_app, "notification preferences changed");
    Ok(Json(body))
}

fn traced(mut event: Event, trace: TraceContext) -> Event {
    event.traceparent = Some(trace.traceparent);
    event
}

fn no_such_user() -> Problem {
    Problem::not_found("the access token's user does not exist; register at POST /v1/users")
}

fn parse_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|e| Problem::internal(&e))
}
