#!/usr/bin/env bash
# The load comparison in one command: installs nginx, haproxy, wrk, h2load (Debian) and rotel
# (the OTLP sink, in the e2e venv), builds release, and runs compare.py. Arguments go to
# compare.py (e.g. --reps 5 --seconds 10, --versions 1,100,1000, --smoke).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
need=()
for b in nginx haproxy wrk h2load; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx haproxy wrk nghttp2-client >/dev/null
fi
venv="$root/tests/e2e/.venv"
export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
command -v uv >/dev/null || python3 -m pip install -q --disable-pip-version-check uv
[ -x "$venv/bin/python" ] || uv venv -q "$venv"
VIRTUAL_ENV="$venv" uv pip install -q --native-tls "rotel==0.0.1a15"
export ROTEL_AGENT="$("$venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
profile=(--release)
case " $* " in *" --smoke "*) profile=() ;; esac
(cd "$root" && cargo build -q "${profile[@]}" --bin modelstamp --example loadgen --example hyper_floor)
exec python3 "$root/benches/load/compare.py" "$@"
