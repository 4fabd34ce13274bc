//! Authentication for the admin API's mutating calls: the operator's bearer token, and MLflow's
//! webhook signature (`X-MLflow-Signature: v1,<base64 HMAC-SHA256>` over
//! `"{delivery_id}.{timestamp}.{payload}"`, as MLflow 3 sends it).

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// Seconds a webhook timestamp may be off (replay window).
const MAX_SKEW_SECS: u64 = 300;

/// Compare in time that does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `Authorization: Bearer <token>` carries this token.
pub fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Why a webhook was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// A header is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The timestamp is outside the replay window.
    #[error("timestamp outside the {MAX_SKEW_SECS} s window")]
    Stale,
    /// The signature does not match.
    #[error("signature mismatch")]
    Signature,
}

/// Verify an MLflow webhook delivery against the shared secret, at time `now` (Unix seconds).
pub fn verify_mlflow(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    now: u64,
) -> Result<(), WebhookError> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::Missing(name))
    };
    let signature = get("x-mlflow-signature")?;
    let timestamp = get("x-mlflow-timestamp")?;
    let delivery = get("x-mlflow-delivery-id")?;
    let ts: u64 = timestamp.parse().map_err(|_| WebhookError::Stale)?;
    if ts.abs_diff(now) > MAX_SKEW_SECS {
        return Err(WebhookError::Stale);
    }
    let given = signature
        .strip_prefix("v1,")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or(WebhookError::Signature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| WebhookError::Signature)?;
    mac.update(delivery.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| WebhookError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(sig: &str, ts: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-mlflow-signature",
            sig.parse().unwrap_or_else(|_| unreachable!()),
        );
        h.insert(
            "x-mlflow-timestamp",
            ts.parse().unwrap_or_else(|_| unreachable!()),
        );
        h.insert(
            "x-mlflow-delivery-id",
            "d-1".parse().unwrap_or_else(|_| unreachable!()),
        );
        h
    }

    // Computed with MLflow 3.17's own mlflow.webhooks.delivery._generate_hmac_signature(
    //   "s3cret", "d-1", "1795680000", '{"entity": "model_version_alias", "action": "created"}').
    const BODY: &str = r#"{"entity": "model_version_alias", "action": "created"}"#;
    const SIG: &str = "v1,xvkE/UmK+S1Dc3Kexore/x85iA0omuYeT9acNxkH+lE=";

    #[test]
    fn accepts_mlflows_own_signature_and_rejects_tampering() {
        let h = headers(SIG, "1795680000");
        assert_eq!(
            verify_mlflow(&h, BODY.as_bytes(), "s3cret", 1_795_680_010),
            Ok(())
        );
        assert_eq!(
            verify_mlflow(&h, b"{}", "s3cret", 1_795_680_010),
            Err(WebhookError::Signature)
        );
        assert_eq!(
            verify_mlflow(&h, BODY.as_bytes(), "other", 1_795_680_010),
            Err(WebhookError::Signature)
        );
        assert_eq!(
            verify_mlflow(&h, BODY.as_bytes(), "s3cret", 1_795_690_000),
            Err(WebhookError::Stale)
        );
        assert_eq!(
            verify_mlflow(&HeaderMap::new(), BODY.as_bytes(), "s3cret", 0),
            Err(WebhookError::Missing("x-mlflow-signature"))
        );
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer t0ken".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert!(bearer_ok(&h, "t0ken"));
        assert!(!bearer_ok(&h, "t0ke"));
        assert!(!bearer_ok(&HeaderMap::new(), "t0ken"));
        assert!(constant_time_eq(b"", b"") && !constant_time_eq(b"a", b"b"));
    }
}
