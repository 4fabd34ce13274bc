//! Open-loop load generator for the load comparison: sends POSTs at a fixed rate over a fixed
//! number of keep-alive connections. Requests are spawned on schedule and never wait for earlier
//! responses, and each latency runs from the moment the request is dispatched, *including* any
//! wait for a free connection, so a slow server cannot hide its queueing (no coordinated
//! omission), while the timer's own millisecond granularity is not charged to the server.
//! wrk2 is not packaged for Debian and h2load reports no percentiles, hence this small tool.
//!
//! Usage: loadgen URL RATE SECONDS CONNECTIONS BODY_FILE (an https:// URL: the CA in LOADGEN_CA_FILE)
//! Prints one JSON object: sent, ok, errors, achieved rate, p50/p90/p99/p999/max in µs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn tls_config() -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(path) = std::env::var("LOADGEN_CA_FILE") {
        for cert in CertificateDer::pem_file_iter(&path).expect("LOADGEN_CA_FILE") {
            roots
                .add(cert.expect("a PEM certificate"))
                .expect("a CA certificate");
        }
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: loadgen URL RATE SECONDS CONNECTIONS BODY_FILE");
        std::process::exit(2);
    }
    let url: http::Uri = args[1].parse().expect("URL");
    let rate: f64 = args[2].parse().expect("RATE");
    let secs: f64 = args[3].parse().expect("SECONDS");
    let conns: usize = args[4].parse().expect("CONNECTIONS");
    let body = Bytes::from(std::fs::read(&args[5]).expect("BODY_FILE"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // https:// URLs (the TLS mode) trust the CA in LOADGEN_CA_FILE and speak HTTP/1.1, as wrk does.
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(conns).build(connector);
        let total = (rate * secs) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(50);
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(conns));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let scheduled = start + interval * i as u32;
            tokio::time::sleep_until(scheduled.into()).await;
            let (client, url, body, sem) = (client.clone(), url.clone(), body.clone(), sem.clone());
                        let due = Instant::now();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let req = http::Request::post(url).header("content-type", "application/json").body(Full::new(body)).unwrap();
                let ok = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        resp.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                                (ok, due.elapsed())
            });
        }
        let mut lat = Vec::with_capacity(total);
        let mut errors = 0usize;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok((true, d)) => lat.push(d),
                _ => errors += 1,
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        lat.sort();
        let q = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).map_or(0, |d| d.as_micros());
        println!(
            "{{\"sent\":{total},\"ok\":{},\"errors\":{errors},\"rate\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
            lat.len(),
            lat.len() as f64 / elapsed,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            lat.last().map_or(0, |d| d.as_micros())
        );
    });
}
