//! Keyset pagination over UUIDv7 ids (`?limit=&cursor=`, newest first), and ids in paths.
//!
//! A page is fetched as one row more than asked: the extra row only says that another page
//! follows, and the last row kept becomes the `next_cursor`. Ids are UUIDv7, so ordering by id
//! is ordering by creation.

use uuid::Uuid;

use crate::Problem;

/// Items per page when the caller does not say.
pub const DEFAULT_LIMIT: i64 = 20;
/// The most items per page.
pub const MAX_LIMIT: i64 = 100;

/// A valid page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    /// Only items older than this id (the previous page's `next_cursor`).
    pub before: Option<Uuid>,
}

impl Page {
    /// Parses the `limit` and `cursor` query parameters; a bad one is a 400 problem naming it.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, Problem> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text.parse::<i64>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
                Problem::bad_request(format!("limit must be a whole number from 1 to {MAX_LIMIT}; got {text:?}"))
                    .with_field("limit", format!("a whole number from 1 to {MAX_LIMIT}"))
            })?,
        };
        let before = cursor
            .map(|c| {
                Uuid::try_parse(c).map_err(|_| {
                    Problem::bad_request(format!("{c:?} is not a cursor; pass the next_cursor of the previous page"))
                        .with_field("cursor", "the next_cursor of the previous page, or none for the first page")
                })
            })
            .transpose()?;
        Ok(Self { limit, before })
    }

    /// Rows to fetch: one more than the limit.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Cuts `items` (fetched with [`fetch`](Self::fetch), newest first) to the page; returns the
    /// cursor of the next page, if there is one.
    pub fn next_cursor<T>(&self, items: &mut Vec<T>, id: impl Fn(&T) -> Uuid) -> Option<String> {
        if items.len() as i64 <= self.limit {
            return None;
        }
        items.truncate(self.limit as usize);
        items.last().map(|item| id(item).to_string())
    }
}

/// Parses the id of `what` (e.g. "an order") from a path; a 400 problem naming the field `id`
/// says where valid ids come from (`listed_by`, e.g. "GET /v1/orders").
pub fn parse_id(text: &str, what: &str, listed_by: &str) -> Result<Uuid, Problem> {
    Uuid::try_parse(text).map_err(|_| {
        Problem::bad_request(format!("{text:?} is not {what} id; ids are UUIDs, as listed by {listed_by}"))
            .with_field("id", "a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_or_name_the_bad_parameter() {
        assert_eq!(Page::parse(None, None).unwrap(), Page { limit: 20, before: None });
        let id = Uuid::now_v7();
        assert_eq!(Page::parse(Some("100"), Some(&id.to_string())).unwrap(), Page { limit: 100, before: Some(id) });
        for (limit, cursor, field) in [
            (Some("0"), None, "limit"),
            (Some("101"), None, "limit"),
            (Some("ten"), None, "limit"),
            (None, Some("p2"), "cursor"),
        ] {
            let problem = Page::parse(limit, cursor).unwrap_err();
            assert_eq!((problem.status, problem.errors[0].field.as_str()), (400, field));
        }
    }

    #[test]
    fn one_extra_row_means_a_next_page() {
        let page = Page { limit: 2, before: None };
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut full = ids.clone();
        assert_eq!(page.next_cursor(&mut full, |u| *u), Some(ids[1].to_string()));
        assert_eq!(full, ids[..2]);
        let mut last = ids[..2].to_vec();
        assert_eq!(page.next_cursor(&mut last, |u| *u), None);
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn bad_ids_name_the_field() {
        let problem = parse_id("42", "an order", "GET /v1/orders").unwrap_err();
        assert_eq!((problem.status, problem.errors[0].field.as_str()), (400, "id"));
        assert!(problem.detail.contains("UUID"));
    }
}
