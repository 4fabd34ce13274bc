//! The canary part of the admin API: `GET /canary/{model}` (the comparison and verdict),
//! `GET /audit` (the audit trail and its chain status), and the traffic changes
//! `POST /routes/{route or model}/weights`, `POST /canary/{model}/promote` and
//! `POST /canary/{model}/rollback`. Traffic changes need the admin token, always: without one
//! configured they are refused.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use super::{Admin, bearer_ok, error, json_response};
use crate::canary::audit::Chain;
use crate::canary::control::{CanaryError, Who};
use crate::codec::percent::query_param;
use crate::routing::WeightsError;

/// The body of a traffic change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    version: Option<String>,
    actor: String,
    reason: String,
    #[serde(default)]
    ticket: Option<String>,
}

fn query(q: Option<&str>, key: &str) -> Option<String> {
    query_param(q, key).filter(|v| !v.is_empty())
}

fn status_of(e: &CanaryError) -> StatusCode {
    match e {
        CanaryError::NoSplit(_)
        | CanaryError::UnknownVersion { .. }
        | CanaryError::NoCandidate(_) => StatusCode::NOT_FOUND,
        CanaryError::Weights(WeightsError::NoSplit(_)) => StatusCode::NOT_FOUND,
        CanaryError::Weights(_) => StatusCode::BAD_REQUEST,
        CanaryError::Audit(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl Admin {
    /// `GET /canary/{model}?baseline=V&candidate=V`.
    pub(super) fn canary(&self, model: &str, q: Option<&str>) -> Response<Full<Bytes>> {
        let c = self.state.canary.compare(
            model,
            query(q, "baseline").as_deref(),
            query(q, "candidate").as_deref(),
        );
        match c {
            Ok(c) => json_response(StatusCode::OK, &json!(c)),
            Err(e) => error(status_of(&e), &e.to_string()),
        }
    }

    /// `GET /audit`: the recent entries, the head, and whether the file still verifies.
    pub(super) fn audit(&self) -> Response<Full<Bytes>> {
        let log = self.state.canary.audit();
        let (entries, seq, hash) = log.recent();
        let p = log.path();
        let chain = match log.chain(seq) {
            Chain::Memory => {
                json!({ "status": "memory", "detail": "audit.path is not set: entries are kept in memory only" })
            }
            Chain::Intact(n) => json!({ "status": "ok", "entries": n, "path": p }),
            Chain::Truncated(n) => json!({ "status": "broken", "path": p,
                "detail": format!("the file ends at entry {n} but the head is {seq} (entries removed from its end)") }),
            Chain::Broken(b) => json!({ "status": "broken", "path": p, "detail": b.to_string() }),
            Chain::Unreadable(e) => json!({ "status": "unreadable", "path": p, "detail": e }),
        };
        json_response(
            StatusCode::OK,
            &json!({ "head": { "seq": seq, "hash": hash }, "chain": chain, "entries": entries }),
        )
    }

    /// Traffic changes: a valid bearer token is always required.
    pub(super) async fn traffic_change(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let snap = self.snapshot();
        let Some(token) = snap.config.admin_token.as_ref() else {
            return error(
                StatusCode::FORBIDDEN,
                "traffic changes need admin.token (or MODELSTAMP_ADMIN_TOKEN) to be set",
            );
        };
        if !bearer_ok(headers, &token.0) {
            return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        }
        let change: Change = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "expected {{\"actor\", \"reason\", \"ticket\"?, \"weights\" or \"version\"?}}: {e}"
                    ),
                );
            }
        };
        if change.actor.trim().is_empty() || change.reason.trim().is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "actor and reason must not be empty",
            );
        }
        let who = Who {
            actor: change.actor,
            reason: Some(change.reason),
            ticket: change.ticket,
        };
        let canary = &self.state.canary;
        let result = if let Some(name) = path
            .strip_prefix("/routes/")
            .and_then(|p| p.strip_suffix("/weights"))
        {
            if change.weights.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "weights must name at least one version",
                );
            }
            canary
                .set_weights(name, &change.weights, who, "set_weights")
                .await
        } else if let Some(model) = path
            .strip_prefix("/canary/")
            .and_then(|p| p.strip_suffix("/promote"))
        {
            canary.promote(model, change.version.as_deref(), who).await
        } else if let Some(model) = path
            .strip_prefix("/canary/")
            .and_then(|p| p.strip_suffix("/rollback"))
        {
            canary.rollback(model, who, "rollback").await
        } else {
            return error(StatusCode::NOT_FOUND, "no such admin endpoint");
        };
        match result {
            Ok(entry) => json_response(StatusCode::OK, &json!(entry)),
            Err(e) => error(status_of(&e), &e.to_string()),
        }
    }
}

/// Whether a POST path is a traffic change.
pub(super) fn is_traffic_change(path: &str) -> bool {
    (path.starts_with("/routes/") && path.ends_with("/weights"))
        || (path.starts_with("/canary/")
            && (path.ends_with("/promote") || path.ends_with("/rollback")))
}
