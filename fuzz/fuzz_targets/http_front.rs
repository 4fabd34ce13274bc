#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../harness.rs"]
mod harness;

static RUNS: AtomicU64 = AtomicU64::new(0);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = harness::http_front(data) {
        panic!("{e}");
    }
    // Every 500 inputs, the sidecar must still serve a well-formed request.
    if RUNS.fetch_add(1, Ordering::Relaxed) % 500 == 499 {
        if let Err(e) = harness::http_front_alive() {
            panic!("after {:?}: {e}", String::from_utf8_lossy(data));
        }
    }
});
