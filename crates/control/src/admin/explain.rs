//! `GET /explain/{model}[?since=1h | ?from=T&to=T]`: the timeline and ranked causes (times as
//! RFC 3339 UTC or milliseconds since the epoch; default: the last hour).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{Admin, error, json_response};
use crate::codec::percent::query_param;
use crate::journal::now_ms;

/// Milliseconds since the epoch of an RFC 3339 time or of a number.
pub use crate::codec::time::parse_ms as parse_time;

/// The window a query asks for: `(from_ms, to_ms)`.
pub fn window(q: Option<&str>) -> Result<(i64, i64), String> {
    let get = |key: &str| query_param(q, key);
    let now = now_ms();
    let to = match get("to") {
        Some(t) => parse_time(&t).ok_or_else(|| format!("invalid `to` {t:?}"))?,
        None => now,
    };
    let from = match (get("from"), get("since")) {
        (Some(f), _) => parse_time(&f).ok_or_else(|| format!("invalid `from` {f:?}"))?,
        (None, Some(s)) => {
            let d =
                crate::config::parse_duration(&s).map_err(|e| format!("invalid `since`: {e}"))?;
            to - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
        }
        (None, None) => to - 3_600_000,
    };
    if from > to {
        return Err("`from` is after `to`".into());
    }
    Ok((from, to))
}

impl Admin {
    /// `GET /explain/{model}`.
    pub(super) async fn explain(&self, model: &str, q: Option<&str>) -> Response<Full<Bytes>> {
        let (from, to) = match window(q) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        match self.state.explainer.explain(model, from, to).await {
            Some(e) => json_response(StatusCode::OK, &json!(e)),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("model {model:?} is not in the registry"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_windows_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2026-11-26T10:42:00.5Z"),
            Some(1_795_689_720_500)
        );
        assert_eq!(parse_time("1795689720500"), Some(1_795_689_720_500));
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(window(Some("from=1000&to=5000")), Ok((1000, 5000)));
        assert_eq!(window(Some("since=2s&to=5000")), Ok((3000, 5000)));
        assert!(window(Some("from=5000&to=1000")).is_err());
        assert!(window(Some("since=soon")).is_err());
    }
}
