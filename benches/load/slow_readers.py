#!/usr/bin/env python3
"""What clients that never read cost the sidecar: RSS growth under slow readers.

A model server (`slow_readers serve`: hyper, HTTP/1.1 and h2c) answers every request with
SIZE MiB.
Through the sidecar (release build, as deployed: mimalloc without eager arena commit), two
cases, each on a fresh sidecar, measured from /proc/PID/status VmRSS:

- `h2`:  one HTTP/2 connection with 256 streams whose windows are never opened (1 MiB answers
  from an h2c model server);
- `h2-open`: the same with 2 GiB windows and a socket the client stops reading, from an h2c and
  from an HTTP/1.1 model server;
- `h1`:  150 HTTP/1.1 connections, 4 KiB receive buffers, never reading (4 MiB answers).

For each: RSS after warm-up, RSS while the clients hold on (growth), and RSS once they left
(memory returned). Prints a Markdown table.

Usage: slow_readers.py [--binary PATH] [--hold 5] [--smoke]
"""

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, MODELSTAMP_ENV, Procs, free_port, wait_port  # noqa: E402


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def case(procs, tmp, binary, client, mode, n, size_mib, protocol, hold):
    up_port, port, admin = free_port(), free_port(), free_port()
    srv = procs.start(f"upstream-{mode}", [str(client), "serve", str(up_port), str(size_mib << 20)])
    wait_port(up_port)
    cfg = tmp / f"slow-{mode}.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
target = "off"
[[routes]]
name = "big"
model = "big"
serves = "1"
upstream = "127.0.0.1:{up_port}"
upstream_protocol = "{protocol}"
match = {{ path_prefix = "/" }}
""")
    reg = tmp / "registry.yaml"
    reg.write_text("models:\n  big:\n    versions:\n      \"1\": {}\n")
    p = procs.start(f"modelstamp-{mode}", [str(binary), "run", "--config", str(cfg)], env=MODELSTAMP_ENV)
    wait_port(admin, timeout=60)
    url = f"http://127.0.0.1:{port}/big"
    for _ in range(3):  # warm-up: connections, pools, the allocator's first arenas
        urllib.request.urlopen(url, timeout=30).read()
    time.sleep(1)
    base = rss_kib(p.pid)
    c = subprocess.Popen([str(client), url, mode, str(n), str(hold)], stdout=subprocess.PIPE, text=True)
    assert c.stdout.readline().strip() == "ready"
    time.sleep(hold / 2)
    held = rss_kib(p.pid)
    assert c.stdout.readline().strip() == "closed"
    c.wait()
    time.sleep(3)
    after = rss_kib(p.pid)
    # Still serving.
    urllib.request.urlopen(url, timeout=30).read()
    procs.stop(p)
    procs.stop(srv)
    return base, held, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "modelstamp"))
    ap.add_argument("--hold", type=float, default=6)
    ap.add_argument("--smoke", action="store_true", help="debug build, fewer clients")
    a = ap.parse_args()
    profile = "debug" if a.smoke else "release"
    binary = Path(a.binary if not a.smoke else ROOT / "target" / "debug" / "modelstamp")
    client = ROOT / "target" / profile / "examples" / "slow_readers"
    if not client.exists():
        client = ROOT / "target" / "debug" / "examples" / "slow_readers"
    cases = [("h2", 256, 1, "http2"), ("h2-open", 256, 1, "http2"), ("h2-open", 256, 1, "http1"),
             ("h1", 150, 4, "http1")]
    if a.smoke:
        cases = [(mode, 8, 1, protocol) for mode, _, _, protocol in cases]
    rows = []
    with tempfile.TemporaryDirectory() as t:
        procs = Procs(t)
        try:
            for mode, n, size, protocol in cases:
                base, held, after = case(procs, Path(t), binary, client, mode, n, size, protocol, a.hold)
                rows.append((mode, n, size, protocol, base, held, after))
                print(f"{mode}: {n} × {size} MiB unread: RSS {base / 1024:.1f} → {held / 1024:.1f} MiB "
                      f"(+{(held - base) / 1024:.1f}), {after / 1024:.1f} MiB after they left", flush=True)
        finally:
            procs.stop_all()
    print("\n| clients | model server | answers | RSS before MiB | while held MiB | growth MiB | after they left MiB |")
    print("|---|---|---|---|---|---|---|")
    for mode, n, size, protocol, base, held, after in rows:
        who = {"h2": f"{n} HTTP/2 streams on one connection, windows closed",
               "h2-open": f"{n} HTTP/2 streams on one connection, 2 GiB windows, socket not read",
               "h1": f"{n} HTTP/1.1 connections"}[mode]
        server = "h2c" if protocol == "http2" else "HTTP/1.1"
        print(f"| {who}, never reading | {server} | {size} MiB | {base / 1024:.1f} | {held / 1024:.1f} | "
              f"{(held - base) / 1024:.1f} | {after / 1024:.1f} |")


if __name__ == "__main__":
    main()
