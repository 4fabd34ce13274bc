//! Replays every committed fuzz corpus (and any crash artifact) through the same entry points
//! the cargo-fuzz targets call, so a fixed crash stays fixed without a nightly toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8]) -> Result<(), String>) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts").join(target),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries {
                inputs.push(e.unwrap().path());
            }
        }
    }
    inputs.sort();
    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if let Err(e) = run(&data) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    inputs.len()
}

#[test]
fn codecs_corpus() {
    assert!(replay("codecs", harness::codecs) >= 20);
}

#[test]
fn config_corpus() {
    assert!(replay("config", harness::config) >= 10);
}

#[test]
fn traceparent_corpus() {
    assert!(replay("traceparent", harness::traceparent) >= 10);
}

#[test]
fn http_front_corpus() {
    assert!(replay("http_front", harness::http_front) >= 20);
    harness::http_front_alive().unwrap();
}
