//! Weir's HTTP edge, shared by every service's routes: RFC 9457 problem+json errors
//! ([`Problem`]), a JSON extractor whose rejections are problems ([`Json`]), bearer-JWT auth
//! ([`auth::Tokens`], [`AuthUser`]), the W3C trace context of a request ([`TraceContext`]) and
//! keyset pagination ([`Page`]);
//! and the application that serves every service's routes on one listener ([`app::App`]: request
//! ids, tracing, RED metrics, timeouts, body and rate limits, probes, OpenAPI and its UI), with
//! the process's logging and metrics set-up ([`telemetry`]).
//!
//! It is glue around axum, not a framework: services write ordinary axum handlers and
//! `utoipa` annotations; the `weir` binary assembles their routers into one application.

pub mod app;
pub mod auth;
mod json;
pub mod page;
mod problem;
pub mod telemetry;
mod trace;

pub use auth::{AuthUser, Tokens};
pub use json::Json;
pub use page::{Page, parse_id};
pub use problem::{Problem, Result};
pub use trace::TraceContext;
