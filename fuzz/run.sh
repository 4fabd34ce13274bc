#!/usr/bin/env bash
# Run every fuzz target for a set time (default 60 s each) on the nightly toolchain, adding what
# it finds to fuzz/corpus/<target>. Crashes land in fuzz/artifacts/<target>; commit them once
# fixed and `cargo test --test fuzz_replay` keeps replaying them.
#   fuzz/run.sh [seconds] [target ...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codecs config traceparent http_front)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
failed=0
for t in "${targets[@]}"; do
    echo "== $t (${secs}s)"
    log="$(mktemp)"
    # -rss_limit_mb: the sidecar target keeps a runtime and a stub model server alive.
    if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        failed=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" || tail -20 "$log"
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE" "$log" || true
    rm -f "$log"
done
exit "$failed"
