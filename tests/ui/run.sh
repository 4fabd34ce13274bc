#!/usr/bin/env bash
# Browser tests of the admin UI: installs Debian's chromium and playwright-core (npm), builds
# modelstamp, and runs the node test runner. Screenshots land in tests/ui/artifacts/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== playwright-core (npm)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

echo "== building modelstamp"
(cd "$root" && cargo build -q)

export MODELSTAMP_BIN="$root/target/debug/modelstamp"
export CHROMIUM="$(command -v chromium)"
mkdir -p "$here/artifacts"
cd "$here"
exec node --test --test-reporter=spec ui.test.mjs
