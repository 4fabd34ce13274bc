#!/usr/bin/env bash
# End-to-end suite on real components: installs what it needs (Prometheus from Debian, the
# Python side in a venv with uv), builds the binary, and runs pytest. Safe to rerun.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "== installing prometheus (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing postgresql (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
  echo "== installing curl and openssl (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl openssl >/dev/null
fi

export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
if ! command -v uv >/dev/null; then
  echo "== installing uv"
  python3 -m pip install -q --disable-pip-version-check uv
fi
if [ ! -x "$here/.venv/bin/python" ]; then
  uv venv -q "$here/.venv"
fi
echo "== python packages"
VIRTUAL_ENV="$here/.venv" uv pip install -q --native-tls -r "$here/requirements.txt"

echo "== building modelstamp"
(cd "$root" && cargo build -q)

export MODELSTAMP_BIN="$root/target/debug/modelstamp"
export ROTEL_AGENT="$("$here/.venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
cd "$here"
exec "$here/.venv/bin/pytest" -q -p no:cacheprovider "$@"
