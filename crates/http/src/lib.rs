//! Weir's HTTP edge, shared by every service's routes: RFC 9457 problem+json errors
//! ([`Problem`]), a JSON extractor whose rejections are problems ([`Json`]), bearer-JWT auth
//! ([`auth::Tokens`], [`AuthUser`]) and the W3C trace context of a request ([`TraceContext`]).
//!
//! It is glue around axum, not a framework: services write ordinary axum handlers and
//! `utoipa` annotations; the `weir` binary assembles their routers into one application.

pub mod auth;
mod json;
mod problem;
mod trace;

pub use auth::{AuthUser, Tokens};
pub use json::Json;
pub use problem::{Problem, Result};
pub use trace::TraceContext;
