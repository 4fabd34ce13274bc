//! The traffic split: which version backend a request goes to. A pure function of the weights
//! and a hash of the sticky key (weighted rendezvous hashing): a key stays on its backend while
//! the weights stay, and when they change only the share that must move, moves.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

use crate::observe::trace::{GOLDEN, mix};

/// A stable hash of a sticky key (FNV-1a, then mixed): the same on every sidecar and restart.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// A fresh key for requests without a sticky key.
pub fn random_key() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x5eed_cafe);
    mix(STATE.fetch_add(GOLDEN, Ordering::Relaxed))
}

/// A uniform number in (0, 1] for (key, backend).
fn unit(key: u64, backend: usize) -> f64 {
    let z = mix(key ^ mix(backend as u64 ^ 0x2545_f491_4f6c_dd1d));
    ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// The backend for `key`: each backend scores `weight / -ln(u)`, the highest wins, so backend
/// `i` wins with probability `weight_i / Σ weight`. `None` when every weight is 0.
pub fn choose(weights: &[u32], key: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let score = f64::from(w) / -unit(key, i).ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then(|| &v[1..])
        })
}

/// An Open Inference path with `/versions/{version}` inserted after the model name, for a
/// backend that shares one model server with the other versions; `None` when the path is not
/// an unversioned Open Inference path of `model`.
pub fn versioned_path(path_and_query: &str, model: &str, version: &str) -> Option<String> {
    let rest = path_and_query
        .strip_prefix("/v2/models/")?
        .strip_prefix(model)?;
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
        return None;
    }
    if rest.starts_with("/versions/") {
        return None;
    }
    Some(format!("/v2/models/{model}/versions/{version}{rest}"))
}

/// An Open Inference path naming `version` instead of the version it names (if any): where a
/// shadow call goes on a model server that hosts several versions.
pub fn with_version(path_and_query: &str, model: &str, version: &str) -> Option<String> {
    if let Some(p) = versioned_path(path_and_query, model, version) {
        return Some(p);
    }
    let rest = path_and_query
        .strip_prefix("/v2/models/")?
        .strip_prefix(model)?
        .strip_prefix("/versions/")?;
    let tail = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    Some(format!("/v2/models/{model}/versions/{version}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], keys: u64) -> Vec<f64> {
        let mut n = vec![0u64; weights.len()];
        for k in 0..keys {
            if let Some(i) = choose(weights, key_hash(&k.to_le_bytes())) {
                n[i] += 1;
            }
        }
        n.iter().map(|c| *c as f64 / keys as f64).collect()
    }

    #[test]
    fn shares_follow_the_weights_over_100k_keys() {
        for weights in [
            vec![90, 10],
            vec![50, 50],
            vec![70, 20, 10],
            vec![1, 0, 3],
            vec![0, 5],
        ] {
            let total: u32 = weights.iter().sum();
            let got = shares(&weights, 100_000);
            for (w, s) in weights.iter().zip(&got) {
                let want = f64::from(*w) / f64::from(total);
                assert!((s - want).abs() < 0.006, "{weights:?}: {got:?}");
            }
        }
        assert_eq!(choose(&[0, 0], 1), None);
        assert_eq!(choose(&[], 1), None);
    }

    #[test]
    fn a_key_stays_put_while_weights_stay_and_few_move_when_they_change() {
        let keys: Vec<u64> = (0..100_000u64)
            .map(|k| key_hash(&k.to_le_bytes()))
            .collect();
        let before: Vec<_> = keys.iter().map(|k| choose(&[90, 10], *k)).collect();
        let again: Vec<_> = keys.iter().map(|k| choose(&[90, 10], *k)).collect();
        assert_eq!(before, again, "sticky: same weights, same backend");
        let scaled: Vec<_> = keys.iter().map(|k| choose(&[180, 20], *k)).collect();
        assert_eq!(before, scaled, "only the ratios matter");
        let after: Vec<_> = keys.iter().map(|k| choose(&[80, 20], *k)).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 1e5;
        // The minimum possible is 10 % (the candidate's share grows by 10 points).
        assert!((0.09..0.115).contains(&moved), "moved {moved}");
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(a, b)| a == b || (*a == Some(0) && *b == Some(1))),
            "keys only move towards the backend that gained"
        );
        let three: Vec<_> = keys.iter().map(|k| choose(&[90, 10, 0], *k)).collect();
        assert_eq!(before, three, "adding a zero-weight backend moves nobody");
    }

    #[test]
    fn cookies_and_versioned_paths() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            http::HeaderValue::from_static("a=1; session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        assert_eq!(
            versioned_path("/v2/models/churn/infer?x=1", "churn", "2").as_deref(),
            Some("/v2/models/churn/versions/2/infer?x=1")
        );
        assert_eq!(
            versioned_path("/v2/models/churn/versions/1/infer", "churn", "2"),
            None
        );
        assert_eq!(
            versioned_path("/v2/models/churnx/infer", "churn", "2"),
            None
        );
        assert_eq!(versioned_path("/predict", "churn", "2"), None);
        assert_eq!(
            with_version("/v2/models/churn/versions/1/infer?a", "churn", "3").as_deref(),
            Some("/v2/models/churn/versions/3/infer?a")
        );
        assert_eq!(
            with_version("/v2/models/churn/infer", "churn", "3").as_deref(),
            Some("/v2/models/churn/versions/3/infer")
        );
    }
}
