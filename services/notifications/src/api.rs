//! HTTP: the caller's own in-app notifications, and marking one read.

use axum::extract::{Path, Query, State, rejection::QueryRejection};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weir_core::Db;
use weir_http::{AuthUser, Json, Page, Problem};

use crate::now_millis;

pub(crate) fn routes(db: Db) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(list_notifications)).routes(routes!(mark_read)).with_state(db)
}

/// Query parameters of the list. Taken as text and parsed here, so that a bad value is
/// answered with a problem that names the parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
    /// `true` for unread notifications only; `false` (the default) for all.
    #[param(value_type = Option<bool>)]
    unread: Option<String>,
}

/// One in-app notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    /// The order it is about (for `order_completed` and `order_cancelled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    /// The document it is about (for `document_classified` and `document_failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_id: Option<Uuid>,
    /// The outcome: `order_completed`, `order_cancelled`, `document_classified` (the document
    /// is ready) or `document_failed`.
    pub kind: String,
    pub title: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    /// When the user marked it read; absent while unread.
    pub read_at: Option<DateTime<Utc>>,
}

/// A page of notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What a valid list request asks for.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    limit: i64,
    /// Only notifications older than this id.
    before: Option<Uuid>,
    unread_only: bool,
}

impl ListQuery {
    fn parse(params: ListParams) -> Result<Self, Problem> {
        let Page { limit, before } = Page::parse(params.limit.as_deref(), params.cursor.as_deref())?;
        let unread_only = match params.unread.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(s) => {
                return Err(Problem::bad_request(format!("unread must be true or false; got {s:?}"))
                    .with_field("unread", "true or false"));
            }
        };
        Ok(Self { limit, before, unread_only })
    }
}

/// Lists the caller's in-app notifications, newest first.
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's in-app notifications", body = NotificationPage),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_notifications(
    State(db): State<Db>,
    user: AuthUser,
    params: Result<Query<ListParams>, QueryRejection>,
) -> weir_http::Result<Json<NotificationPage>> {
    let Query(params) = params.map_err(|e| {
        Problem::bad_request(format!(
            "the query string is invalid ({}); the parameters are limit, cursor and unread",
            e.body_text()
        ))
    })?;
    let query = ListQuery::parse(params)?;
    let mut sql = String::from(
        "SELECT id, subject_id, kind, title, body, created_at, read_at FROM notifications
         WHERE user_id = $1 AND in_app = 1",
    );
    let mut args: Vec<weir_core::Value> = vec![user.user_id.to_string().into()];
    if query.unread_only {
        sql.push_str(" AND read_at IS NULL");
    }
    if let Some(before) = query.before {
        args.push(before.to_string().into());
        sql.push_str(&format!(" AND id < ${}", args.len()));
    }
    let page = Page { limit: query.limit, before: query.before };
    args.push(page.fetch().into());
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
    let rows = db.query(&sql, &args).await?;
    let mut items = rows.iter().map(view).collect::<Result<Vec<_>, _>>().map_err(|e| Problem::internal(&e))?;
    let next_cursor = page.next_cursor(&mut items, |n| n.id);
    Ok(Json(NotificationPage { items, next_cursor }))
}

fn view(row: &weir_core::db::Row) -> weir_core::db::Result<NotificationView> {
    let uuid = |i: usize| -> weir_core::db::Result<Uuid> {
        Uuid::try_parse(row.text(i)?).map_err(|e| weir_core::db::Error::Decode(format!("column {i}: {e}")))
    };
    let time = |millis: i64| -> weir_core::db::Result<DateTime<Utc>> {
        DateTime::from_timestamp_millis(millis)
            .ok_or_else(|| weir_core::db::Error::Decode(format!("{millis} is not a time")))
    };
    let (subject, kind) = (uuid(1)?, row.text(2)?.to_owned());
    let about_document = kind.starts_with("document_");
    Ok(NotificationView {
        id: uuid(0)?,
        order_id: (!about_document).then_some(subject),
        document_id: about_document.then_some(subject),
        kind,
        title: row.text(3)?.to_owned(),
        body: row.text(4)?.to_owned(),
        created_at: time(row.i64(5)?)?,
        read_at: row.opt_i64(6)?.map(time).transpose()?,
    })
}

/// Marks one of the caller's notifications read (again is harmless).
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/read",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "The notification's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Marked read"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller has no such notification", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn mark_read(State(db): State<Db>, user: AuthUser, Path(id): Path<String>) -> weir_http::Result<StatusCode> {
    let id = weir_http::parse_id(&id, "a notification", "GET /v1/notifications")?;
    let mut tx = db.begin().await?;
    let changed = tx
        .execute(
            "UPDATE notifications SET read_at = COALESCE(read_at, $1) WHERE id = $2 AND user_id = $3 AND in_app = 1",
            &[now_millis().into(), id.to_string().into(), user.user_id.to_string().into()],
        )
        .await?;
    tx.commit().await?;
    if changed == 0 {
        return Err(Problem::not_found(format!("you have no notification {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: Option<&str>, cursor: Option<&str>, unread: Option<&str>) -> ListParams {
        ListParams { limit: limit.map(Into::into), cursor: cursor.map(Into::into), unread: unread.map(Into::into) }
    }

    #[test]
    fn list_queries_parse_or_name_the_bad_parameter() {
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let ok = [
            (params(None, None, None), ListQuery { limit: 20, before: None, unread_only: false }),
            (params(Some("1"), None, Some("true")), ListQuery { limit: 1, before: None, unread_only: true }),
            (
                params(Some("100"), Some(id), Some("false")),
                ListQuery { limit: 100, before: Some(Uuid::parse_str(id).unwrap()), unread_only: false },
            ),
        ];
        for (input, expected) in ok {
            assert_eq!(ListQuery::parse(input).unwrap(), expected);
        }
        let bad = [
            (params(Some("0"), None, None), "limit"),
            (params(Some("101"), None, None), "limit"),
            (params(Some("-1"), None, None), "limit"),
            (params(Some("ten"), None, None), "limit"),
            (params(None, Some("page2"), None), "cursor"),
            (params(None, None, Some("yes")), "unread"),
            (params(None, None, Some("")), "unread"),
        ];
        for (input, field) in bad {
            let problem = ListQuery::parse(input).unwrap_err();
            assert_eq!(problem.status, 400);
            assert_eq!(problem.errors[0].field, field);
        }
    }
}
