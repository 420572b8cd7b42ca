//! `GET /wharf/v1/projects/{project}/locations/{location}/services/{service}/metrics?window=1h`:
//! the last hour (or less) of a service's request count by response class, latency
//! percentiles and instance count, one point per 10 s ([`wharf_logging::history`]), for the
//! console's charts. Needs `run.services.get` on the service.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use wharf_iam::Resource;
use wharf_iam::roles::perm;
use wharf_logging::history::{Series, WINDOW};

use super::{ApiError, Caller, Params, authorize};
use crate::server::Platform;

pub fn routes() -> Router<Platform> {
    Router::new().route("/wharf/v1/projects/{project}/locations/{location}/services/{service}/metrics", get(metrics))
}

/// `"1h"`, `"30m"`, `"600s"`: a window of at most an hour.
fn parse_window(window: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = window else { return Ok(WINDOW) };
    let bad = || {
        ApiError::InvalidArgument(format!(
            "window {text:?} is not a duration Wharf keeps metrics for: give seconds, minutes or hours up to one hour, e.g. window=1h, window=15m or window=600s"
        ))
    };
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if seconds == 0 || seconds > WINDOW.as_secs() {
        return Err(bad());
    }
    Ok(Duration::from_secs(seconds))
}

async fn metrics(
    State(platform): State<Platform>,
    Caller(caller): Caller,
    Path((project, location, service)): Path<(String, String, String)>,
    params: Params,
) -> Result<Json<Series>, ApiError> {
    let parent = platform.control.parent(&project, &location)?;
    authorize(&platform, &caller, perm::SERVICES_GET, &Resource::service(&project, &location, &service))?;
    let window = parse_window(params.get("window"))?;
    // A service that does not exist is a 404, not an empty chart.
    platform.control.get_service(&parent, &service)?;
    let snapshot = platform.metrics.snapshot();
    Ok(Json(platform.metrics_history.series(&snapshot, &project, &location, &service, window, SystemTime::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_up_to_an_hour_are_taken_and_others_refused_by_name() {
        assert_eq!(parse_window(None).unwrap(), WINDOW);
        assert_eq!(parse_window(Some("1h")).unwrap(), WINDOW);
        assert_eq!(parse_window(Some("15m")).unwrap(), Duration::from_secs(900));
        assert_eq!(parse_window(Some("600s")).unwrap(), Duration::from_secs(600));
        for bad in ["2h", "0s", "1d", "h", "", "-5m", "99999999999999999999h"] {
            let error = parse_window(Some(bad)).unwrap_err().to_string();
            assert!(error.starts_with(&format!("window {bad:?}")), "{error}");
        }
    }
}
