//! With the collector down, requests are unaffected, dropped spans are counted and memory stays
//! bounded. Alone in its own test binary so the process RSS measures only this scenario.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_unaffected_drops_are_counted_and_memory_is_bounded() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start_quiet(oi_handler("1")).await;
    let traces = format!(
        "[traces]\nsampler = \"always_on\"\notlp_endpoint = \"http://{closed}\"\nexport_timeout = \"200ms\"\nqueue = 64\nbatch = 32\nrecent_requests = 100\n"
    );
    let h = Harness::start(
        &churn_route(up.addr, "1", ""),
        &format!("[access_log]\ntarget = \"off\"\n{traces}")
            .replace("[access_log]\ntarget = \"off\"\n", ""),
    )
    .await;
    let client = h1_client();
    let url = h.url("/v2/models/churn/infer");
    let mut failures = 0;
    let run = |n: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut bad = 0;
            for _ in 0..n {
                let resp = client.request(post(&url, "{}")).await.unwrap();
                if resp.status() != 200 {
                    bad += 1;
                }
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            bad
        }
    };
    failures += run(2_000).await;
    let warm = rss_kib();
    let mut samples = vec![warm];
    for _ in 0..4 {
        failures += run(1_000).await;
        samples.push(rss_kib());
    }
    eprintln!("RSS samples (KiB) after 2k, 3k, 4k, 5k, 6k requests: {samples:?}");
    let grown = samples.last().unwrap().saturating_sub(warm);
    assert_eq!(failures, 0);
    let text = h.metrics().await;
    let dropped = metric_value(
        &text,
        r#"modelstamp_spans_dropped_total{reason="queue_full"}"#,
    ) + metric_value(
        &text,
        r#"modelstamp_spans_dropped_total{reason="export_failed"}"#,
    );
    assert!(
        dropped >= 11_000.0,
        "12k spans, none exported, nearly all counted as dropped: {dropped}\n{text}"
    );
    assert_eq!(metric_value(&text, "modelstamp_spans_exported_total"), 0.0);
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB over 4,000 requests after warm-up with the collector down"
    );
    eprintln!(
        "collector down: 6000 requests, 0 failed, {dropped} spans dropped, RSS growth after warm-up {grown} KiB"
    );
}
