//! `[[routes.backends]]`, `[routes.canary]`, `[routes.shadow]` and `[audit]`: how a route splits
//! traffic between versions, which requests may pin one, how the candidate is judged against the
//! baseline, and what is mirrored to a shadow version.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;

use super::raw::{RawBackend, RawCanary, RawRoute, RawShadow};
use super::validate::{dur, is_token};
use super::{ConfigError, Serves};

/// One version backend of a split route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The version (or `@alias`) it serves.
    pub version: Serves,
    /// Share of traffic, relative to the other backends' weights.
    pub weight: u32,
    /// Its own model server; `None`: the route's upstream, addressed by the Open Inference
    /// `/versions/{v}` path.
    pub upstream: Option<Authority>,
}

/// Where a split's sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
}

/// A network (`10.0.0.0/8`, `::1/128`) allowed to pin a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `addr/prefix` (or a bare address: one host).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// When the candidate is judged worse than the baseline (or good enough to promote).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Requests each version needs in the window before a verdict other than `hold`.
    pub min_requests: u64,
    /// Significance level of the error-rate test.
    pub alpha: f64,
    /// Largest tolerated increase of the error rate (absolute, 0.01 = one point).
    pub max_error_rate_increase: f64,
    /// Largest tolerated candidate p99 ÷ baseline p99.
    pub max_latency_ratio: f64,
    /// Largest tolerated PSI of the candidate's predictions against the baseline's.
    pub max_prediction_psi: f64,
    /// Smallest tolerated shadow agreement.
    pub min_shadow_agreement: f64,
    /// Largest tolerated data-quality issue rate of any feature on the candidate.
    pub max_issue_rate: f64,
}

/// A split route's canary settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Index of the baseline backend.
    pub baseline: usize,
    /// Index of the candidate backend, if the route has two or more.
    pub candidate: Option<usize>,
    /// Sticky key; without it every request is split independently.
    pub sticky: Option<Sticky>,
    /// Header that forces a version, honoured only from `pin_sources`.
    pub pin_header: Option<HeaderName>,
    /// Networks allowed to pin.
    pub pin_sources: Vec<Cidr>,
    /// Verdict thresholds.
    pub thresholds: Thresholds,
    /// Roll back after this many consecutive `rollback` verdicts (0: never).
    pub auto_rollback_after: u32,
    /// How often the automatic rollback judges the candidate.
    pub check_interval: Duration,
}

impl Canary {
    /// The settings of a route without `[routes.canary]`.
    pub fn defaults() -> Self {
        canary(&mut Vec::new(), None, &[], &|f: &str| f.to_string())
    }
}

/// A shadow version: a share of requests is also sent there, never waited for.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The version (or `@alias`).
    pub version: Serves,
    /// Its model server; `None`: the route's upstream with the `/versions/{v}` path.
    pub upstream: Option<Authority>,
    /// Share of requests mirrored.
    pub sample: f64,
    /// How long a shadow call may take.
    pub timeout: Duration,
    /// Numeric predictions agree when within this absolute difference...
    pub abs_tolerance: f64,
    /// ...or this relative difference.
    pub rel_tolerance: f64,
    /// Shadow calls in flight at most; beyond it mirroring is skipped and counted.
    pub max_in_flight: usize,
}

fn serves(s: &str) -> Serves {
    match s.strip_prefix('@') {
        Some(alias) => Serves::Alias(alias.to_string()),
        None => Serves::Version(s.to_string()),
    }
}

fn authority(errs: &mut Vec<ConfigError>, at: &str, s: Option<&str>) -> Option<Authority> {
    let s = s?;
    match s.parse::<Authority>() {
        Ok(a) if a.port_u16().is_some() && !s.contains('@') => Some(a),
        _ => {
            errs.push(ConfigError::new(
                at,
                format!("invalid address \"{s}\" (expected host:port)"),
            ));
            None
        }
    }
}

/// Validate a route's backends.
pub fn backends(
    errs: &mut Vec<ConfigError>,
    r: &RawRoute,
    at: &dyn Fn(&str) -> String,
) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    for (i, b) in r.backends.iter().enumerate() {
        let here = |f: &str| at(&format!("backends[{i}].{f}"));
        let RawBackend {
            version,
            weight,
            upstream,
        } = b;
        let Some(version) = version.as_deref() else {
            errs.push(ConfigError::new(here("version"), "missing"));
            continue;
        };
        if !is_token(version.trim_start_matches('@')) {
            errs.push(ConfigError::new(
                here("version"),
                format!("invalid version or alias \"{version}\""),
            ));
        }
        let version = serves(version);
        if out.iter().any(|o| o.version == version) {
            errs.push(ConfigError::new(here("version"), "listed twice"));
        }
        let weight = weight.unwrap_or(0);
        if weight > 10_000 {
            errs.push(ConfigError::new(here("weight"), "must be 0..=10000"));
        }
        out.push(Backend {
            version,
            weight,
            upstream: authority(errs, &here("upstream"), upstream.as_deref()),
        });
    }
    if !out.is_empty() {
        if r.model.is_none() {
            errs.push(ConfigError::new(at("backends"), "need routes.model"));
        }
        if r.serves.is_some() {
            errs.push(ConfigError::new(
                at("serves"),
                "a route with backends serves what they list; remove `serves`",
            ));
        }
        if out.iter().all(|b| b.weight == 0) {
            errs.push(ConfigError::new(
                at("backends"),
                "at least one weight must be above 0",
            ));
        }
    }
    out
}

/// Validate a route's canary settings against its backends.
pub fn canary(
    errs: &mut Vec<ConfigError>,
    raw: Option<&RawCanary>,
    backends: &[Backend],
    at: &dyn Fn(&str) -> String,
) -> Canary {
    let c = raw.cloned().unwrap_or_default();
    if raw.is_some() && backends.is_empty() {
        errs.push(ConfigError::new(at("canary"), "needs routes.backends"));
    }
    let index =
        |errs: &mut Vec<ConfigError>, field: &str, v: Option<&str>, default: Option<usize>| {
            let Some(v) = v else { return default };
            let want = serves(v);
            let found = backends.iter().position(|b| b.version == want);
            if found.is_none() {
                errs.push(ConfigError::new(
                    at(&format!("canary.{field}")),
                    format!("\"{v}\" is not one of the route's backends"),
                ));
            }
            found
        };
    let baseline = index(errs, "baseline", c.baseline.as_deref(), Some(0)).unwrap_or(0);
    let second = (backends.len() > 1).then_some(usize::from(baseline == 0));
    let candidate = index(errs, "candidate", c.candidate.as_deref(), second);
    if candidate == Some(baseline) && !backends.is_empty() {
        errs.push(ConfigError::new(
            at("canary.candidate"),
            "must differ from the baseline",
        ));
    }
    let header = |errs: &mut Vec<ConfigError>, field: &str, v: &Option<String>| {
        v.as_deref().and_then(|h| {
            let parsed = HeaderName::from_bytes(h.as_bytes()).ok();
            if parsed.is_none() {
                errs.push(ConfigError::new(
                    at(&format!("canary.{field}")),
                    format!("invalid header name \"{h}\""),
                ));
            }
            parsed
        })
    };
    let sticky = match (&c.sticky_header, &c.sticky_cookie) {
        (Some(_), Some(_)) => {
            errs.push(ConfigError::new(
                at("canary.sticky_cookie"),
                "set sticky_header or sticky_cookie, not both",
            ));
            None
        }
        (Some(_), None) => header(errs, "sticky_header", &c.sticky_header).map(Sticky::Header),
        (None, Some(name)) if is_token(name) => Some(Sticky::Cookie(name.clone())),
        (None, Some(name)) => {
            errs.push(ConfigError::new(
                at("canary.sticky_cookie"),
                format!("invalid cookie name \"{name}\""),
            ));
            None
        }
        (None, None) => None,
    };
    let pin_header = header(errs, "pin_header", &c.pin_header);
    let mut pin_sources = Vec::new();
    for (i, s) in c.pin_sources.iter().flatten().enumerate() {
        match Cidr::parse(s) {
            Some(n) => pin_sources.push(n),
            None => errs.push(ConfigError::new(
                at(&format!("canary.pin_sources[{i}]")),
                format!("invalid network \"{s}\" (expected addr/prefix)"),
            )),
        }
    }
    if pin_header.is_some() && pin_sources.is_empty() {
        errs.push(ConfigError::new(
            at("canary.pin_sources"),
            "pin_header needs the networks allowed to pin (e.g. [\"10.0.0.0/8\"])",
        ));
    }
    let mut share = |field: &str, v: Option<f64>, default: f64, range: (f64, f64)| {
        let v = v.unwrap_or(default);
        if !(v.is_finite() && v >= range.0 && v <= range.1) {
            errs.push(ConfigError::new(
                at(&format!("canary.{field}")),
                format!("must be {}..={}", range.0, range.1),
            ));
        }
        v
    };
    let thresholds = Thresholds {
        min_requests: c.min_requests.unwrap_or(200).max(1),
        alpha: share("alpha", c.alpha, 0.05, (0.0, 0.5)),
        max_error_rate_increase: share(
            "max_error_rate_increase",
            c.max_error_rate_increase,
            0.01,
            (0.0, 1.0),
        ),
        max_latency_ratio: share("max_latency_ratio", c.max_latency_ratio, 1.5, (1.0, 100.0)),
        max_prediction_psi: share(
            "max_prediction_psi",
            c.max_prediction_psi,
            0.25,
            (0.0, 100.0),
        ),
        min_shadow_agreement: share(
            "min_shadow_agreement",
            c.min_shadow_agreement,
            0.95,
            (0.0, 1.0),
        ),
        max_issue_rate: share("max_issue_rate", c.max_issue_rate, 0.05, (0.0, 1.0)),
    };
    let check_interval = dur(
        errs,
        &at("canary.check_interval"),
        &c.check_interval,
        60_000,
    );
    if check_interval < Duration::from_secs(1) {
        errs.push(ConfigError::new(
            at("canary.check_interval"),
            "must be at least 1s",
        ));
    }
    Canary {
        baseline,
        candidate,
        sticky,
        pin_header,
        pin_sources,
        thresholds,
        auto_rollback_after: c.auto_rollback_after.unwrap_or(0),
        check_interval,
    }
}

/// Validate a route's shadow.
pub fn shadow(
    errs: &mut Vec<ConfigError>,
    raw: Option<&RawShadow>,
    has_model: bool,
    at: &dyn Fn(&str) -> String,
) -> Option<Shadow> {
    let s = raw?;
    if !has_model {
        errs.push(ConfigError::new(at("shadow"), "needs routes.model"));
    }
    let version = match s.version.as_deref() {
        Some(v) if is_token(v.trim_start_matches('@')) => serves(v),
        Some(v) => {
            errs.push(ConfigError::new(
                at("shadow.version"),
                format!("invalid version or alias \"{v}\""),
            ));
            return None;
        }
        None => {
            errs.push(ConfigError::new(at("shadow.version"), "missing"));
            return None;
        }
    };
    let sample = s.sample.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(ConfigError::new(at("shadow.sample"), "must be 0..=1"));
    }
    let tol = |errs: &mut Vec<ConfigError>, field: &str, v: Option<f64>, d: f64| {
        let v = v.unwrap_or(d);
        if !(v.is_finite() && v >= 0.0) {
            errs.push(ConfigError::new(
                at(&format!("shadow.{field}")),
                "must be a non-negative number",
            ));
        }
        v
    };
    Some(Shadow {
        version,
        upstream: authority(errs, &at("shadow.upstream"), s.upstream.as_deref()),
        sample,
        timeout: dur(errs, &at("shadow.timeout"), &s.timeout, 5_000),
        abs_tolerance: tol(errs, "abs_tolerance", s.abs_tolerance, 1e-6),
        rel_tolerance: tol(errs, "rel_tolerance", s.rel_tolerance, 1e-3),
        max_in_flight: s.max_in_flight.unwrap_or(64).max(1),
    })
}

/// The audit log's path (relative paths are against the config's folder).
pub fn audit_path(raw: Option<&str>, base_dir: &Path) -> Option<PathBuf> {
    raw.map(|p| base_dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate};

    fn check(text: &str) -> Result<crate::config::Config, Vec<String>> {
        let raw = parse(text, "t.toml")
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        validate(&raw, Path::new("/etc/ms"))
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    const ROUTE: &str =
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"127.0.0.1:1\"\n";

    #[test]
    fn a_split_route_gets_its_backends_roles_and_defaults() {
        let text = format!(
            "[audit]\npath = \"audit.jsonl\"\n{ROUTE}[[routes.backends]]\nversion = \"@champion\"\nweight = 90\n\
             [[routes.backends]]\nversion = \"2\"\nweight = 10\nupstream = \"127.0.0.1:2\"\n\
             [routes.canary]\nsticky_cookie = \"sid\"\npin_header = \"x-pin\"\npin_sources = [\"10.0.0.0/8\"]\n\
             [routes.shadow]\nversion = \"3\"\nsample = 0.5\n"
        );
        let c = check(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let r = &c.routes[0];
        assert_eq!(r.backends.len(), 2);
        assert_eq!(r.backends[0].version, Serves::Alias("champion".into()));
        assert_eq!((r.canary.baseline, r.canary.candidate), (0, Some(1)));
        assert_eq!(r.canary.sticky, Some(Sticky::Cookie("sid".into())));
        assert_eq!(r.canary.thresholds.min_requests, 200);
        assert_eq!(r.shadow.as_ref().map(|s| s.sample), Some(0.5));
        assert_eq!(
            c.audit_path.as_deref(),
            Some(Path::new("/etc/ms/audit.jsonl"))
        );
        let d = Canary::defaults();
        assert_eq!((d.thresholds.alpha, d.auto_rollback_after), (0.05, 0));
    }

    #[test]
    fn every_canary_mistake_is_reported_with_its_path() {
        let text = format!(
            "{ROUTE}serves = \"1\"\n[[routes.backends]]\nversion = \"1\"\nweight = 0\n[[routes.backends]]\nversion = \"1\"\n\
             [routes.canary]\ncandidate = \"9\"\nsticky_header = \"x\"\nsticky_cookie = \"y\"\npin_header = \"x-pin\"\nalpha = 2.0\n\
             [routes.shadow]\nsample = 3.0\nversion = \"4\"\n"
        );
        let errs = check(&text).err().unwrap_or_default();
        let want = [
            "routes[0].backends[1].version: listed twice",
            "routes[0].serves: a route with backends serves what they list; remove `serves`",
            "routes[0].backends: at least one weight must be above 0",
            "routes[0].canary.candidate: \"9\" is not one of the route's backends",
            "routes[0].canary.sticky_cookie: set sticky_header or sticky_cookie, not both",
            "routes[0].canary.pin_sources: pin_header needs the networks allowed to pin (e.g. [\"10.0.0.0/8\"])",
            "routes[0].canary.alpha: must be 0..=0.5",
            "routes[0].shadow.sample: must be 0..=1",
        ];
        assert_eq!(errs, want.map(String::from).to_vec());
    }

    #[test]
    fn networks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let net = Cidr::parse("10.1.0.0/16").unwrap_or_else(|| panic!("valid"));
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert_eq!(
            Cidr::parse("127.0.0.1").map(|c| c.contains(ip("127.0.0.1"))),
            Some(true)
        );
        assert_eq!(
            Cidr::parse("127.0.0.0/8").map(|c| c.contains(ip("::ffff:127.0.0.1"))),
            Some(true)
        );
        assert_eq!(
            Cidr::parse("::1/128").map(|c| c.contains(ip("::1"))),
            Some(true)
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
        assert_eq!(
            Cidr::parse("0.0.0.0/0").map(|c| c.contains(ip("8.8.8.8"))),
            Some(true)
        );
    }
}
