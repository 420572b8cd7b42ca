//! Cloud Logging v2's `entries:list` (`POST /v2/entries:list`): log entries of a project's
//! services and jobs, selected with the Logging query language ([`wharf_logging::filter`]), in
//! the `LogEntry` shape Google's `google-cloud-logging` client reads.

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;
use wharf_iam::roles::perm;
use wharf_iam::{Principal, Resource};
use wharf_logging::{Filter, Order, Origin};

use super::{ApiError, ApiJson};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    Router::new().route("/v2/entries:list", post(list_entries))
}

/// `google.logging.v2.ListLogEntriesRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListEntries {
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    order_by: String,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: String,
}

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

async fn list_entries(
    State(platform): State<Platform>,
    Extension(caller): Extension<Principal>,
    ApiJson(request): ApiJson<ListEntries>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let project = match request.resource_names.as_slice() {
        [one] => one.strip_prefix("projects/").filter(|p| !p.is_empty() && !p.contains('/')).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "resourceNames: '{one}' is not supported: Wharf lists entries of one project, as \"projects/PROJECT\""
            ))
        })?,
        [] => return Err(ApiError::InvalidArgument("resourceNames is required: [\"projects/PROJECT\"]".into())),
        _ => {
            return Err(ApiError::InvalidArgument(
                "resourceNames: Wharf lists entries of one project at a time; send one \"projects/PROJECT\"".into(),
            ));
        }
    };
    // Google's permission for reading a project's log entries (roles/viewer, run.viewer and up).
    super::authorize(&platform, &caller, perm::LOGS_LIST, &Resource::project(project))?;
    let order = match request.order_by.trim() {
        "" | "timestamp asc" => Order::OldestFirst,
        "timestamp desc" => Order::NewestFirst,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "orderBy: '{other}' is not supported: use \"timestamp asc\" or \"timestamp desc\""
            )));
        }
    };
    let page_size = match request.page_size {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(n) if n < 0 => return Err(ApiError::InvalidArgument(format!("pageSize: {n} is negative"))),
        Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
    };
    let filter = Filter::parse(&request.filter).map_err(|e| ApiError::InvalidArgument(format!("filter: {e}")))?;
    let origin = Origin { project: project.to_owned(), locations: platform.control.locations(project)? };
    let token = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
    let page = wharf_logging::query::run(&platform.logs, &filter, &origin, order, page_size, token).await.map_err(
        |e| match e {
            wharf_logging::QueryError::BadPageToken(_) => ApiError::InvalidArgument(e.to_string()),
            wharf_logging::QueryError::Store(source) => {
                ApiError::Internal(format!("reading the log store failed: {source}"))
            }
        },
    )?;
    tracing::debug!(rows_read = page.rows_read, entries = page.entries.len(), "entries:list answered");
    let mut body = serde_json::json!({ "entries": page.entries });
    if let Some(next) = page.next_page_token {
        body["nextPageToken"] = serde_json::Value::String(next);
    }
    Ok(Json(body))
}
