#!/usr/bin/env bash
# Proxied latency while a 1,000-version registry is rewritten every second, in one command:
# builds release (and, with --baseline-rev REV, the same binary from an older commit in a
# worktree of its own), then runs reload.py. Other arguments go to reload.py
# (e.g. --reps 3 --seconds 20 --rate 1000, --smoke).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
args=()
rev=""
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline-rev) rev="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
profile=(--release)
case " ${args[*]:-} " in *" --smoke "*) profile=() ;; esac
(cd "$root" && cargo build -q "${profile[@]}" --bin modelstamp --example loadgen)
if [ -n "$rev" ]; then
  base="$root/target/baseline-$rev"
  if [ ! -x "$base/bin/modelstamp" ]; then
    tree="$(mktemp -d)"
    git -C "$root" worktree add -q --detach "$tree" "$rev"
    (cd "$tree" && CARGO_TARGET_DIR="$base/target" cargo build -q --release --bin modelstamp)
    mkdir -p "$base/bin"
    cp "$base/target/release/modelstamp" "$base/bin/modelstamp"
    git -C "$root" worktree remove --force "$tree"
  fi
  args+=(--baseline "$base/bin/modelstamp")
fi
exec python3 "$root/benches/load/reload.py" "${args[@]}"
