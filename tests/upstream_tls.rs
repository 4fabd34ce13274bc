//! Model servers over HTTPS (`[routes.upstream_tls]`): HTTP/1.1 and h2 through a TLS front,
//! pooled connections, the certificate checked against the test CA and the name, a client
//! certificate for servers that require one (rotated with its files), shadow calls over TLS,
//! and config errors that name the key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn fixture(name: &str) -> PathBuf {
    std::fs::canonicalize("tests/fixtures/tls")
        .unwrap()
        .join(name)
}

/// A `churn` route to `upstream` with these `[routes.upstream_tls]` keys.
fn tls_route(upstream: &str, keys: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"churn\"\nmodel = \"churn\"\nupstream = \"{upstream}\"\nserves = \"1\"\nmatch = {{ open_inference = true }}\n{extra}\n[routes.upstream_tls]\n{keys}\n"
    )
}

fn ca() -> String {
    format!("ca_file = \"{}\"", fixture("ca.pem").display())
}

const CONNECT_ERRORS: &str =
    r#"modelstamp_upstream_errors_total{model="churn",version="1",kind="connect"}"#;

#[tokio::test]
async fn http1_and_h2_reach_a_model_server_over_tls_on_pooled_connections() {
    let up = Upstream::start(oi_handler("1")).await;
    let front = tls::front(up.addr, false).await;
    let h = Harness::start(&tls_route(&front.to_string(), &ca(), ""), "").await;
    for _ in 0..5 {
        let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-model-version"], "1");
    }
    assert_eq!(up.last().version, http::Version::HTTP_11);
    assert_eq!(
        up.last().headers["host"],
        front.to_string(),
        "Host names the HTTPS model server, as its SNI does"
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "five sequential requests share one TLS connection"
    );
    assert_eq!(h.metric(CONNECT_ERRORS).await, 0.0);
    // h2 over TLS (ALPN) when the route asks for it.
    let extra = "upstream_protocol = \"http2\"";
    let h2 = Harness::start(&tls_route(&front.to_string(), &ca(), extra), "").await;
    for client in [h1_client(), h2_client()] {
        let resp = client
            .request(post(&h2.url("/v2/models/churn/infer"), "{}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(up.last().version, http::Version::HTTP_2);
    }
    let log = h.access_log();
    assert!(log.iter().all(|l| l["status"] == 200), "{log:?}");
}

#[tokio::test]
async fn the_certificate_is_checked_against_the_ca_and_the_name() {
    let up = Upstream::start(oi_handler("1")).await;
    let front = tls::front(up.addr, false).await;
    let port = front.port();
    // The test certificate names localhost and 127.0.0.1.
    for (upstream, keys, ok) in [
        (format!("localhost:{port}"), ca(), true),
        (
            format!("127.0.0.1:{port}"),
            format!("{}\nserver_name = \"localhost\"", ca()),
            true,
        ),
        (
            format!("127.0.0.1:{port}"),
            format!("{}\nserver_name = \"models.example\"", ca()),
            false,
        ),
        // The platform's authorities do not include the test CA.
        (format!("127.0.0.1:{port}"), String::new(), false),
    ] {
        let hits = up.hits.load(Ordering::SeqCst);
        let h = Harness::start(&tls_route(&upstream, &keys, ""), "").await;
        let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
        if ok {
            assert_eq!(resp.status(), 200, "{upstream} {keys}");
        } else {
            assert_eq!(resp.status(), 502, "{upstream} {keys}");
            let resp = h2_client()
                .request(post(&h.url("/v2/models/churn/infer"), "{}"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 502, "h2: {upstream} {keys}");
            assert_eq!(h.metric(CONNECT_ERRORS).await, 2.0, "{keys}");
            assert_eq!(
                up.hits.load(Ordering::SeqCst),
                hits,
                "nothing reached the model server: {keys}"
            );
        }
    }
}

#[tokio::test]
async fn a_client_certificate_is_presented_and_rotated_with_its_files() {
    let up = Upstream::start(oi_handler("1")).await;
    let front = tls::front(up.addr, true).await;
    let dir = temp_dir("upstream-mtls");
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    // A certificate for servers, not clients: the front refuses it.
    std::fs::copy(fixture("server2.pem"), &cert).unwrap();
    std::fs::copy(fixture("server2.key"), &key).unwrap();
    let keys = format!(
        "{}\ncert_file = \"{}\"\nkey_file = \"{}\"",
        ca(),
        cert.display(),
        key.display()
    );
    let h = Harness::start(&tls_route(&front.to_string(), &keys, ""), "").await;
    let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
    assert_eq!(resp.status(), 502, "refused by the model server's TLS");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // cert-manager rotates the Secret: the next connections present the new certificate.
    replace(&key, &fixture("client.key"));
    replace(&cert, &fixture("client.pem"));
    let served = eventually(Duration::from_secs(10), || async {
        let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
        resp.status() == 200
    })
    .await;
    assert!(served, "the rotated client certificate is presented");
    // Without a client certificate at all, the same server refuses.
    let bare = Harness::start(&tls_route(&front.to_string(), &ca(), ""), "").await;
    let (resp, _) = send(post(&bare.url("/v2/models/churn/infer"), "{}")).await;
    assert_eq!(resp.status(), 502);
}

/// Replace a file as a Secret volume does: a new file renamed over the old one.
fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn shadow_calls_go_over_tls_too() {
    let up = Upstream::start(oi_handler("1")).await;
    let front = tls::front(up.addr, false).await;
    let shadow = "[routes.shadow]\nversion = \"2\"\nsample = 1.0\n";
    let h = Harness::start(&tls_route(&front.to_string(), &ca(), shadow), "").await;
    for _ in 0..3 {
        let (resp, _) = send(post(&h.url("/v2/models/churn/infer"), "{}")).await;
        assert_eq!(resp.status(), 200);
    }
    let ok =
        r#"modelstamp_shadow_requests_total{model="churn",baseline="1",candidate="2",result="ok"}"#;
    assert!(h.metric_reaches(ok, 3.0).await, "{}", h.metrics().await);
    let mirrored = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.headers.contains_key("x-modelstamp-shadow"))
        .count();
    assert_eq!(mirrored, 3);
}

#[tokio::test]
async fn bad_tls_settings_are_config_errors_naming_the_key() {
    let dir = temp_dir("upstream-tls-bad");
    let check = |keys: &str| {
        let text = config_text(&dir, &tls_route("127.0.0.1:1", keys, ""), "");
        let raw = modelstamp::config::parse(&text, "c.toml").unwrap();
        modelstamp::config::validate(&raw, &dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let missing = check("ca_file = \"absent.pem\"");
    assert!(
        missing.contains("routes[0].upstream_tls.ca_file") && missing.contains("absent.pem"),
        "{missing}"
    );
    let name = check(&format!("{}\nserver_name = \"not a name\"", ca()));
    assert!(
        name.contains("routes[0].upstream_tls.server_name"),
        "{name}"
    );
    let mismatched = check(&format!(
        "{}\ncert_file = \"{}\"\nkey_file = \"{}\"",
        ca(),
        fixture("client.pem").display(),
        fixture("server.key").display()
    ));
    assert!(
        mismatched.contains("not a certificate and its key"),
        "{mismatched}"
    );
    let unknown = modelstamp::config::parse(&tls_route("127.0.0.1:1", "sni = \"x\"", ""), "c.toml")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(unknown.contains("sni"), "{unknown}");
}

#[tokio::test]
async fn a_model_server_that_never_answers_the_handshake_is_given_up_at_the_connect_timeout() {
    // Accepts, then says nothing: the handshake never completes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let timeouts = "[upstream]\nconnect_timeout = \"200ms\"\nresponse_timeout = \"60s\"\n";
    for protocol in ["http1", "http2"] {
        let extra = format!("upstream_protocol = \"{protocol}\"");
        let h = Harness::start(&tls_route(&silent.to_string(), &ca(), &extra), timeouts).await;
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            send(post(&h.url("/v2/models/churn/infer"), "{}")),
        )
        .await;
        let (resp, _) = answered.unwrap_or_else(|_| panic!("{protocol}: waited past 10 s"));
        assert_eq!(resp.status(), 504, "{protocol}");
        let timed_out =
            r#"modelstamp_upstream_errors_total{model="churn",version="1",kind="timeout"}"#;
        assert_eq!(h.metric(timed_out).await, 1.0, "{protocol}");
    }
}
