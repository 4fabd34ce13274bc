//! Fuzz entry points, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the corpus
//! replay in `cargo test` (`tests/fuzz_replay.rs`). Each takes arbitrary bytes, runs them
//! through one parser, and returns `Err` when an invariant breaks (a panic is a failure too).

#![allow(dead_code)] // each target uses one entry point

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use modelstamp::config;
use modelstamp::inspect::codec::{Codec, Framing, Predicted};
use modelstamp::inspect::grpc_infer;
use modelstamp::observe::trace::parse_traceparent;

/// Most values one message may yield (the codecs' documented bound).
const MAX_VALUES: usize = 100_000;

/// Every codec, on request and response bytes. The first byte picks the codec and how the
/// body is framed (whole, SSE, or a binary-extension JSON head of half its bytes); the rest is
/// the body.
pub fn codecs(data: &[u8]) -> Result<(), String> {
    let Some((&selector, body)) = data.split_first() else {
        return Ok(());
    };
    let codecs = [
        Codec::OpenInference,
        Codec::OpenInferenceGrpc,
        Codec::KserveV1,
        Codec::Mlflow,
        Codec::OpenAi,
    ];
    let codec = codecs[usize::from(selector & 0x3f) % codecs.len()];
    let framing = match selector >> 6 {
        2 => Framing::Sse,
        1 | 3 => Framing::JsonHead(body.len() / 2),
        _ => Framing::Whole,
    };
    let names: Vec<String> = ["tenure", "usage_gb", "plan", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Ok(cols) = codec.features(body, framing, &names)
        && cols.len() > MAX_VALUES
    {
        return Err(format!("features: {} values over the bound", cols.len()));
    }
    let _ = grpc_infer::leading(body);
    let _ = grpc_infer::reported_version(body);
    match codec.predicted(body, framing) {
        Ok(Predicted::Table(cols)) if cols.len() > MAX_VALUES => {
            Err(format!("predictions: {} values over the bound", cols.len()))
        }
        _ => Ok(()),
    }
}

/// The config parser and validator, and the registry file parser: any text gives a config or
/// a list of errors, each with a path and a message.
pub fn config(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    match config::parse(&text, "fuzz.toml") {
        Ok(raw) => {
            if let Err(errs) = config::validate(&raw, Path::new("/nonexistent")) {
                check_errors("validate", &errs)?;
            }
        }
        Err(errs) => check_errors("parse", &errs)?,
    }
    if let Err(errs) = modelstamp::registry::parse_registry(&text, "fuzz.yaml") {
        check_errors("registry", &errs)?;
    }
    Ok(())
}

fn check_errors(stage: &str, errs: &config::ConfigErrors) -> Result<(), String> {
    if errs.0.is_empty() {
        return Err(format!("{stage}: failed without an error"));
    }
    for e in &errs.0 {
        if e.path.is_empty() || e.message.is_empty() {
            return Err(format!("{stage}: an error without path or message: {e:?}"));
        }
    }
    Ok(())
}

/// `traceparent`: what parses is lowercase hex of the right lengths, not all zero, and
/// survives a round trip.
pub fn traceparent(data: &[u8]) -> Result<(), String> {
    let Some(tp) = parse_traceparent(data) else {
        return Ok(());
    };
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && s.bytes().any(|b| b != b'0')
    };
    if !hex(&tp.trace_id, 32) || !hex(&tp.span_id, 16) {
        return Err(format!("accepted a malformed traceparent: {tp:?}"));
    }
    let again = format!("00-{}-{}-{:02x}", tp.trace_id, tp.span_id, tp.flags);
    match parse_traceparent(again.as_bytes()) {
        Some(back) if back == tp => Ok(()),
        other => Err(format!("round trip changed {tp:?} into {other:?}")),
    }
}

/// A sidecar in front of a stub model server, started once per process.
struct Front {
    proxy: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn front() -> &'static Front {
    static FRONT: OnceLock<Front> = OnceLock::new();
    FRONT.get_or_init(|| {
        // libFuzzer's C main leaves SIGPIPE fatal (Rust's main ignores it, as modelstamp's
        // does): a peer that hangs up mid-write would kill the fuzzer, not find a bug.
        #[cfg(fuzzing)]
        // SAFETY: setting a signal disposition before any thread writes to a socket.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let proxy = rt.block_on(async {
            let (_tx, rx) = tokio::sync::watch::channel(false);
            std::mem::forget(_tx);
            let upstream = modelstamp::demo::model_server::start_fixed(
                "127.0.0.1:0".parse().expect("addr"),
                rx,
            )
            .await
            .expect("stub model server");
            let dir = std::env::temp_dir().join(format!("modelstamp-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(
                dir.join("registry.yaml"),
                "models:\n  churn:\n    versions:\n      \"1\":\n        code: { commit: \"97f447d\" }\n",
            )
            .expect("registry");
            let cfg = dir.join("modelstamp.toml");
            std::fs::write(
                &cfg,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                     [access_log]\ntarget = \"off\"\n[limits]\nheader_read_timeout = \"1s\"\n\
                     [[routes]]\nmodel = \"churn\"\nupstream = \"{upstream}\"\nserves = \"1\"\n"
                ),
            )
            .expect("config");
            let sidecar = modelstamp::Sidecar::start(modelstamp::routing::Source::File(cfg))
                .await
                .expect("sidecar");
            let addr = sidecar.proxy_addr;
            std::mem::forget(sidecar);
            addr
        });
        Front { proxy, _rt: rt }
    })
}

/// A connection to the sidecar's data plane; reads give up after 5 s.
fn connect() -> Result<TcpStream, String> {
    let s = TcpStream::connect(front().proxy).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Raw bytes into the data-plane port: the answer is nothing or HTTP (HTTP/2 for the h2
/// preface), the connection ends within the header deadline, and the sidecar keeps serving.
pub fn http_front(data: &[u8]) -> Result<(), String> {
    let mut s = connect()?;
    let _ = s.write_all(data);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("the connection was neither answered nor closed within 5 s".into());
            }
            Err(_) => break, // reset: a refusal
        }
    }
    let h2 = data.starts_with(b"PRI * HTTP/2.0");
    if !answer.is_empty() && !h2 && !answer.starts_with(b"HTTP/1.") {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
        return Err(format!("answered something that is not HTTP/1: {head:?}"));
    }
    Ok(())
}

/// After a batch of inputs: the sidecar still answers a well-formed request.
pub fn http_front_alive() -> Result<(), String> {
    let mut s = connect()?;
    s.write_all(
        b"POST /v2/models/churn/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}",
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "the sidecar stopped serving: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        ))
    }
}
