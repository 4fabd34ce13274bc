//! TLS on the listeners: clients over TLS with ALPN h2 and http/1.1, `x-forwarded-proto`
//! saying so, plaintext and failed handshakes counted, client certificates required
//! on the admin listener, and a rotated certificate served without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn fixtures() -> PathBuf {
    std::fs::canonicalize("tests/fixtures/tls").unwrap()
}

/// A client trusting the test CA, offering `alpn`, presenting the test client certificate when
/// `client_cert`.
fn client_config(alpn: &[u8], client_cert: bool) -> Arc<ClientConfig> {
    let dir = fixtures();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_cert {
        let chain = CertificateDer::pem_file_iter(dir.join("client.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// One request over TLS: the status, the ALPN protocol agreed and the server's leaf
/// certificate; `Err` when the handshake or the request failed.
async fn tls_request(
    addr: SocketAddr,
    path: &str,
    alpn: &[u8],
    client_cert: bool,
) -> Result<(u16, Vec<u8>, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(alpn, client_cert));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let agreed = session.alpn_protocol().unwrap_or_default().to_vec();
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    // The admin API's probes are GETs; the data plane's inference calls POSTs.
    let method = if path.starts_with("/healthz") {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"inputs":[]}"#)))
        .unwrap();
    let io = TokioIo::new(tls);
    let resp = if alpn == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, agreed, leaf))
}

fn pem_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn tls_section(listener: &str, dir: &Path, client_ca: bool) -> String {
    let f = |name: &str| dir.join(name).display().to_string();
    let mut section = format!(
        "[{listener}.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        f("served.pem"),
        f("served.key"),
    );
    if client_ca {
        section.push_str(&format!("client_ca_file = \"{}\"\n", f("ca.pem")));
    }
    section
}

#[tokio::test]
async fn clients_reach_both_listeners_over_tls_with_h2_and_http1() {
    let up = Upstream::start(oi_handler("1")).await;
    let certs = temp_dir("listener-tls");
    for (from, to) in [
        ("server.pem", "served.pem"),
        ("server.key", "served.key"),
        ("ca.pem", "ca.pem"),
    ] {
        std::fs::copy(fixtures().join(from), certs.join(to)).unwrap();
    }
    let routes = churn_route(up.addr, "@champion", "");
    let h = Harness::start(&routes, &tls_section("server", &certs, false)).await;
    let proxy = h.sidecar.proxy_addr;

    // The data plane, over both protocols: the model server is told the client used https.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (status, agreed, leaf) = tls_request(proxy, "/v2/models/churn/infer", alpn, false)
            .await
            .unwrap();
        assert_eq!((status, agreed.as_slice()), (200, alpn));
        assert_eq!(leaf, pem_der(&fixtures().join("server.pem")));
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.headers["x-forwarded-proto"] == "https"),
        "{seen:?}"
    );
    // Plaintext on the TLS port is refused and counted, never served.
    let plaintext = tokio::time::timeout(
        Duration::from_secs(5),
        h1_client().request(
            Request::post(format!("http://{proxy}/v2/models/churn/infer"))
                .body(full("{}"))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    assert!(
        h.metric_reaches(
            r#"modelstamp_connection_errors_total{listener="proxy",kind="tls_handshake"}"#,
            1.0
        )
        .await,
        "{}",
        h.metrics().await
    );
    assert_eq!(up.seen.lock().unwrap().len(), 2);

    // An admin listener that requires a client certificate from the configured CA.
    let secured = Harness::start(&routes, &tls_section("admin", &certs, true)).await;
    let admin = secured.sidecar.admin_addr;
    let refused = tls_request(admin, "/healthz", b"http/1.1", false).await;
    assert!(refused.is_err(), "{refused:?}");
    let (status, _, _) = tls_request(admin, "/healthz", b"http/1.1", true)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // cert-manager renews the certificate: new handshakes get it, without a restart.
    std::fs::copy(fixtures().join("server2.pem"), certs.join("served.pem")).unwrap();
    std::fs::copy(fixtures().join("server2.key"), certs.join("served.key")).unwrap();
    let renewed = pem_der(&fixtures().join("server2.pem"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            tls_request(proxy, "/v2/models/churn/infer", b"h2", false)
                .await
                .is_ok_and(|(status, _, leaf)| status == 200 && leaf == renewed)
        })
        .await,
        "the renewed certificate is served"
    );
}

#[tokio::test]
async fn unusable_listener_certificates_are_config_errors() {
    let up = Upstream::start(oi_handler("1")).await;
    let dir = fixtures();
    let f = |name: &str| dir.join(name).display().to_string();
    for (section, expected) in [
        (
            format!("[server.tls]\ncert_file = \"{}\"\n", f("server.pem")),
            "server.tls: needs cert_file and key_file",
        ),
        (
            format!(
                "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                f("server.pem"),
                f("client.key")
            ),
            "not a certificate and its key",
        ),
        (
            format!(
                "[admin.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
                f("server.pem"),
                f("server.key"),
                f("absent.pem")
            ),
            "admin.tls: ",
        ),
    ] {
        let dir = temp_dir("listener-tls-bad");
        let config = dir.join("modelstamp.toml");
        std::fs::write(
            &config,
            config_text_polling(&dir, &churn_route(up.addr, "@champion", ""), &section, "1h"),
        )
        .unwrap();
        let err = match modelstamp::Sidecar::start(modelstamp::routing::Source::File(config)).await
        {
            Ok(_) => panic!("started with {section}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn the_cli_reaches_an_admin_api_over_tls_with_a_client_certificate() {
    let up = Upstream::start(oi_handler("1")).await;
    let certs = temp_dir("admin-cli-tls");
    for (from, to) in [
        ("server.pem", "served.pem"),
        ("server.key", "served.key"),
        ("server2.pem", "other.pem"),
        ("server2.key", "other.key"),
        ("ca.pem", "ca.pem"),
    ] {
        std::fs::copy(fixtures().join(from), certs.join(to)).unwrap();
    }
    let routes = churn_route(up.addr, "@champion", "");
    let h = Harness::start(&routes, &tls_section("admin", &certs, true)).await;
    // The config as the CLI reads it: the admin port the sidecar got.
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{}\"", h.sidecar.admin_addr),
    );
    let cli_config = h.dir.join("cli.toml");
    std::fs::write(&cli_config, &text).unwrap();
    // The same, but naming another certificate than the one served.
    let other = h.dir.join("other.toml");
    std::fs::write(
        &other,
        text.replace("served.pem", "other.pem")
            .replace("served.key", "other.key"),
    )
    .unwrap();
    let healthcheck = |args: Vec<String>, client_cert: bool| {
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_modelstamp"));
            cmd.arg("healthcheck").args(args);
            if client_cert {
                cmd.env("MODELSTAMP_ADMIN_CERT_FILE", fixtures().join("client.pem"))
                    .env("MODELSTAMP_ADMIN_KEY_FILE", fixtures().join("client.key"));
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let config = |path: &Path| vec!["--config".to_string(), path.display().to_string()];
    let port = h.sidecar.admin_addr.port();
    let ca = fixtures().join("ca.pem").display().to_string();
    let by_url = |host: &str, ca: Option<&str>| {
        let mut args = vec!["--admin".to_string(), format!("https://{host}:{port}")];
        if let Some(ca) = ca {
            args.extend(["--ca-file".to_string(), ca.to_string()]);
        }
        args
    };
    for (what, args, client_cert, ok) in [
        (
            "the config's certificate, pinned",
            config(&cli_config),
            true,
            true,
        ),
        ("no client certificate", config(&cli_config), false, false),
        ("another certificate pinned", config(&other), true, false),
        ("the CA given", by_url("localhost", Some(&ca)), true, true),
        (
            "the platform's CAs only",
            by_url("127.0.0.1", None),
            true,
            false,
        ),
    ] {
        let (code, stderr) = healthcheck(args, client_cert).await.unwrap();
        assert_eq!(code, Some(if ok { 0 } else { 1 }), "{what}: {stderr}");
        if !ok {
            assert!(
                stderr.contains("cannot reach the admin API"),
                "{what}: {stderr}"
            );
        }
    }
}
