#!/usr/bin/env python3
"""One-run load comparison of modelstamp against direct, nginx and haproxy (see BENCHMARKS.md).

Targets run interleaved (the order rotates every repetition) against one fast upstream stub
(`modelstamp demo-model --fixed`, Open Inference v2 JSON). modelstamp runs with every feature on:
stamping, metrics with exemplars, 100 % sampled spans exported over OTLP to a local rotel sink,
response inspection (the reported model_version) and a JSON access log to a file, with its
default single proxy thread (`modelstamp`) and with two (`modelstamp-2w`). nginx and haproxy
proxy with keep-alive upstream pools and an access log on, two workers each (one per core).

Per target and scenario it prints medians over repetitions of: req/s, p50 and p99 latency,
proxy CPU per request (all threads, /proc), proxy CPU / upstream CPU per request (cancels the
host's speed drift), peak RSS, and ratios to direct, nginx and haproxy. Before each run it waits
for a quiet machine and it reports how much CPU other processes used during the run.

`--features` instead runs modelstamp with one observation feature off at a time
(`modelstamp-no-inspect`, `modelstamp-no-spans`, `modelstamp-no-log`), all three off
(`modelstamp-bare`) and hyper-floor: what each feature costs. The OTLP sink's CPU per request
is reported too (it shares the cores).

`--tls` runs the same scenarios with the clients speaking TLS (HTTP/1.1, keep-alive) to each
proxy: modelstamp's `[server.tls]`, nginx's `listen ... ssl` and haproxy's `bind ... ssl`, all
with the test certificate of tests/fixtures/tls; `direct` stays plaintext, so "added" latency
includes terminating TLS; `modelstamp-plain` and `nginx-json-plain` are the same proxies without
TLS, in the same run. The upstream leg is plaintext for every target.

`--grpc` compares the proxied gRPC path with the REST path through the same proxies: gRPC
`ModelInfer` over h2c (h2load; the stub answers a `ModelInferResponse` and `grpc-status: 0`), the
same request as REST JSON over h2c (h2load) and over HTTP/1.1 (wrk). modelstamp resolves the
call from the message's leading fields, stamps it, inspects it (the gRPC codec on its worker) and
counts it by its `grpc-status`; nginx uses `grpc_pass`, haproxy an h2 backend. A gRPC status
other than OK that modelstamp counted is reported as an error.

Usage: compare.py [--reps 5] [--seconds 10] [--smoke] [--versions 1,100,1000] [--features] [--tls] [--grpc]
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps({"id": "bench", "inputs": [
    {"name": f, "datatype": "FP64", "shape": [1, 1], "data": [0.25]}
    for f in ("tenure", "monthly_charges", "support_calls", "usage_gb")]})
PATH = "/v2/models/churn/infer"
# As deployed (docs/deployment.md, "Memory"): mimalloc without eager arena commit keeps RSS near glibc's.
MODELSTAMP_ENV = {"MODELSTAMP_LOG": "warn", "MIMALLOC_ARENA_EAGER_COMMIT": "0"}
# modelstamp targets: the observation features each one turns off.
MODELSTAMP_TARGETS = {
    "modelstamp": frozenset(),
    "modelstamp-2w": frozenset(),
    # The TLS mode's references (with nginx-json-plain): the same proxy with a plaintext listener.
    "modelstamp-plain": frozenset(),
    "modelstamp-no-inspect": frozenset({"inspect"}),
    "modelstamp-no-spans": frozenset({"spans"}),
    "modelstamp-no-log": frozenset({"log"}),
    "modelstamp-bare": frozenset({"inspect", "spans", "log"}),
}
FEATURE_TARGETS = "direct,modelstamp,modelstamp-no-inspect,modelstamp-no-spans,modelstamp-no-log,modelstamp-bare,hyper-floor"
# hyper-floor has no TLS listener.
TLS_TARGETS = "direct,modelstamp-plain,modelstamp,modelstamp-2w,nginx-json-plain,nginx,nginx-json,haproxy"
TLS_DIR = ROOT / "tests" / "fixtures" / "tls"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def proc_cpu(pids):
    """CPU seconds (user + system, all threads) of these processes and their children."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / CLK


def tree(pid):
    """pid and its descendants (nginx and rotel fork workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def machine_busy():
    """(busy jiffies, total jiffies) of the whole machine."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def wait_quiet(threshold=0.15, max_wait=60):
    """Wait until the machine is mostly idle for a second (another tenant may be busy)."""
    deadline = time.time() + max_wait
    while True:
        b0, t0 = machine_busy()
        time.sleep(1)
        b1, t1 = machine_busy()
        frac = (b1 - b0) / max(1, t1 - t0)
        if frac < threshold or time.time() > deadline:
            return frac


class Procs:
    def __init__(self, tmp):
        self.tmp, self.procs = Path(tmp), []

    def start(self, name, args, env=None):
        log = open(self.tmp / f"{name}.out", "ab")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop(p)


def modelstamp_config(tmp, port, admin, upstream, otlp, versions=1, off=frozenset(), tls=False):
    """Every feature on, except those in `off` ("inspect", "spans", "log"); TLS on the listener with `tls`."""
    reg = tmp / f"registry-{versions}.yaml"
    lines = ["models:"]
    for i in range(versions):
        name = "churn" if i == versions - 1 else f"model{i}"
        lines += [f"  {name}:", "    aliases: { champion: \"1\" }", "    versions:",
                  f"      \"1\": {{ code: {{ commit: c{i:07x} }}, training_data: {{ name: d{i}, digest: x{i:07x} }} }}"]
    reg.write_text("\n".join(lines) + "\n")
    cfg = tmp / f"modelstamp-{versions}-{'-'.join(sorted(off)) or 'all'}.toml"
    server_tls = f'[server.tls]\ncert_file = "{TLS_DIR / "server.pem"}"\nkey_file = "{TLS_DIR / "server.key"}"' if tls else ""
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{server_tls}
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
target = "{'off' if 'log' in off else tmp / 'modelstamp-access.log'}"
[registry]
path = "{reg}"
[traces]
sampler = "{'always_off' if 'spans' in off else 'always_on'}"
{f'otlp_endpoint = "http://127.0.0.1:{otlp}"' if otlp else ''}
[[routes]]
name = "models"
upstream = "127.0.0.1:{upstream}"
serves = "@champion"
match = {{ open_inference = true }}
{'[routes.inspect]' + chr(10) + 'codec = "off"' if 'inspect' in off else ''}
""")
    return cfg


NGINX_JSON = ("'{\"time\":\"$time_iso8601\",\"request_id\":\"$request_id\",\"method\":\"$request_method\","
              "\"uri\":\"$request_uri\",\"status\":$status,\"upstream_status\":\"$upstream_status\","
              "\"request_time\":$request_time,\"upstream_time\":\"$upstream_response_time\","
              "\"bytes_in\":$request_length,\"bytes_out\":$bytes_sent,\"client\":\"$remote_addr\"}'")


def nginx_config(tmp, name, port, upstream, json_log, tls=False):
    d = tmp / name
    d.mkdir(exist_ok=True)
    fmt = "json" if json_log else "combined"
    cfg = d / "nginx.conf"
    cfg.write_text(f"""
worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  log_format json escape=json {NGINX_JSON};
  access_log {d}/access.log {fmt};
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream model {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port}{' ssl' if tls else ''};
    {f'ssl_certificate {TLS_DIR / "server.pem"}; ssl_certificate_key {TLS_DIR / "server.key"};' if tls else ''}
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id;
    }}
  }}
}}
""")
    return cfg


def haproxy_config(tmp, port, upstream, tls=False):
    bind = f"127.0.0.1:{port}"
    if tls:
        # haproxy reads the certificate and its key from one file.
        pem = tmp / "haproxy.pem"
        pem.write_text((TLS_DIR / "server.pem").read_text() + (TLS_DIR / "server.key").read_text())
        bind += f" ssl crt {pem} alpn http/1.1"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""
global
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind {bind}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{upstream}
""")
    return cfg


def parse_duration_us(s):
    m = re.match(r"([\d.]+)(ns|us|ms|s|m|h)$", s)
    if not m:
        raise ValueError(f"unparseable wrk duration {s!r}")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"ns": 1e-3, "us": 1, "ms": 1e3, "s": 1e6, "m": 6e7, "h": 3.6e9}[unit]


def run_wrk(url, conns, secs, lua):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    try:
        return parse_wrk(out)
    except (AttributeError, ValueError) as e:
        raise RuntimeError(f"cannot parse wrk output ({e}):\n{out}") from e


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?timeout) (\d+)", out))
    p50 = parse_duration_us(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))
    p99 = parse_duration_us(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
    return {"rps": rps, "requests": total, "p50_us": p50, "p99_us": p99, "errors": errors}


def run_rate(loadgen, url, rate, secs, body_file):
    out = subprocess.run([str(loadgen), url, str(rate), str(secs), "32", str(body_file)],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"rps": r["rate"], "requests": r["ok"], "p50_us": r["p50_us"], "p99_us": r["p99_us"], "errors": r["errors"]}


def measure(fn, proxy_pids, upstream_pids, sink_pids):
    quiet = wait_quiet()
    c0p, c0u, c0s = proc_cpu(proxy_pids), proc_cpu(upstream_pids), proc_cpu(sink_pids)
    b0, t0 = machine_busy()
    r = fn()
    b1, t1 = machine_busy()
    c1p, c1u, c1s = proc_cpu(proxy_pids), proc_cpu(upstream_pids), proc_cpu(sink_pids)
    n = max(1, r["requests"])
    ours = (c1p - c0p) + (c1u - c0u)
    # Machine CPU seconds used meanwhile, less our proxy and upstream (the load generator and
    # other tenants remain: reported so a noisy run can be spotted).
    machine = (b1 - b0) / CLK
    r.update(proxy_cpu_us=(c1p - c0p) / n * 1e6, upstream_cpu_us=(c1u - c0u) / n * 1e6,
             sink_cpu_us=(c1s - c0s) / n * 1e6, other_cpu_s=max(0.0, machine - ours), quiet_before=quiet)
    r["cpu_ratio"] = r["proxy_cpu_us"] / r["upstream_cpu_us"] if r["upstream_cpu_us"] else float("nan")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="debug build, 1 rep, 2 s runs: checks the script works")
    ap.add_argument("--versions", default="", help="e.g. 1,100,1000: per-request cost vs configured versions")
    ap.add_argument("--targets", default="direct,modelstamp,modelstamp-2w,hyper-floor,nginx,nginx-json,haproxy")
    ap.add_argument("--features", action="store_true",
                    help="what each observation feature costs: modelstamp with each off, all off, hyper-floor")
    ap.add_argument("--json", default="", help="write all runs here")
    ap.add_argument("--tls", action="store_true", help="clients speak TLS to each proxy (direct stays plaintext)")
    ap.add_argument("--grpc", action="store_true",
                    help="gRPC ModelInfer (h2load over h2c) against REST over h2c and HTTP/1.1, same proxies")
    a = ap.parse_args()
    if a.tls:
        os.environ["LOADGEN_CA_FILE"] = str(TLS_DIR / "ca.pem")
    profile = "debug" if a.smoke else "release"
    if a.smoke:
        a.reps, a.seconds = 1, 2
    binary = ROOT / "target" / profile / "modelstamp"
    loadgen = ROOT / "target" / profile / "examples" / "loadgen"
    rotel = os.environ.get("ROTEL_AGENT")
    with tempfile.TemporaryDirectory(prefix="modelstamp-load-") as t:
        tmp = Path(t)
        procs = Procs(tmp)
        try:
            body_file = tmp / "body.json"
            body_file.write_text(BODY)
            lua = tmp / "post.lua"
            lua.write_text(f"wrk.method = 'POST'\nwrk.body = [[{BODY}]]\nwrk.headers['Content-Type'] = 'application/json'\n")
            up_port = free_port()
            # The stub runs a worker per core, as every run before modelstamp's default became one
            # thread: the CPU ratio's denominator stays comparable across the passes in BENCHMARKS.md and docs/perf-history.md.
            upstream = procs.start("upstream", [str(binary), "demo-model", "--fixed", "--listen", f"127.0.0.1:{up_port}"],
                                   env={"MODELSTAMP_WORKERS": "auto"})
            wait_port(up_port)
            otlp, sink = None, None
            if rotel:
                otlp = free_port()
                sink = procs.start("rotel", [rotel, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{otlp}", "--exporter", "blackhole",
                                      "--otlp-http-endpoint", f"127.0.0.1:{free_port()}", "--pid-file", str(tmp / "rotel.pid")])
                wait_port(otlp)
            if a.versions:
                return versions_mode(a, procs, binary, tmp, up_port, upstream, otlp, lua)
            if a.grpc:
                return grpc_mode(a, procs, binary, tmp, up_port, upstream, otlp, sink, lua)
            scenarios = [("c32", lambda url: run_wrk(url, 32, a.seconds, lua)),
                         ("c64", lambda url: run_wrk(url, 64, a.seconds, lua)),
                         (f"rate{a.rate}", lambda url: run_rate(loadgen, url, a.rate, a.seconds, body_file))]
            targets = (FEATURE_TARGETS if a.features else TLS_TARGETS if a.tls else a.targets).split(",")
            scheme = "https" if a.tls else "http"
            runs = []
            for rep in range(a.reps):
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for target in order:
                    port = free_port()
                    if target == "direct":
                        proc, url = None, f"http://127.0.0.1:{up_port}{PATH}"
                    elif target in MODELSTAMP_TARGETS:
                        # modelstamp runs one proxy thread unless MODELSTAMP_WORKERS says otherwise;
                        # modelstamp-2w runs two, as many as nginx's and haproxy's workers here.
                        cfg = modelstamp_config(tmp, port, free_port(), up_port, otlp, off=MODELSTAMP_TARGETS[target],
                                                tls=a.tls and target != "modelstamp-plain")
                        env = dict(MODELSTAMP_ENV, MODELSTAMP_WORKERS="2" if target == "modelstamp-2w" else "1")
                        proc = procs.start("modelstamp", [str(binary), "run", "--config", str(cfg)], env=env)
                    elif target == "hyper-floor":
                        proc = procs.start(target, [str(ROOT / "target" / profile / "examples" / "hyper_floor"),
                                                    f"127.0.0.1:{port}", f"127.0.0.1:{up_port}"])
                    elif target.startswith("nginx"):
                        # nginx-json-plain: the TLS mode's plaintext nginx-json, in the same run.
                        cfg = nginx_config(tmp, target, port, up_port, target.startswith("nginx-json"),
                                           tls=a.tls and not target.endswith("-plain"))
                        proc = procs.start(target, ["nginx", "-c", str(cfg)])
                    elif target == "haproxy":
                        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(haproxy_config(tmp, port, up_port, tls=a.tls))])
                    if proc:
                        wait_port(port)
                        plain = target.endswith("-plain")
                        url = f"{'http' if plain else scheme}://127.0.0.1:{port}{PATH}"
                        run_wrk(url, 32, 1, lua)  # warm-up: pools, caches
                    proxy_pids = tree(proc.pid) if proc else []
                    for name, fn in scenarios:
                        r = measure(lambda: fn(url), proxy_pids, [upstream.pid], tree(sink.pid) if sink else [])
                        r.update(target=target, scenario=name, rep=rep)
                        runs.append(r)
                        print(f"rep {rep} {target:<21} {name:<9} {r['rps']:>9.0f} req/s  p50 {r['p50_us']:>7.0f} us  "
                              f"p99 {r['p99_us']:>7.0f} us  proxy {r['proxy_cpu_us']:>5.1f} us/req  ratio {r['cpu_ratio']:.2f}  "
                              f"sink {r['sink_cpu_us']:.1f} us/req  errors {r['errors']}  other CPU {r['other_cpu_s']:.1f}s", flush=True)
                    if proc:
                        rss = peak_rss_kib(proxy_pids)
                        for r in runs:
                            if r["target"] == target and r["rep"] == rep:
                                r["peak_rss_mib"] = rss / 1024
                        procs.stop(proc)
            if a.json:
                Path(a.json).write_text(json.dumps(runs, indent=1))
            print(report(runs, targets, [s for s, _ in scenarios]))
        finally:
            procs.stop_all()


def med(runs, target, scenario, key):
    vals = [r[key] for r in runs if r["target"] == target and r["scenario"] == scenario and key in r]
    return statistics.median(vals) if vals else float("nan")


def report(runs, targets, scenarios):
    out = []
    for s in scenarios:
        out.append(f"\n### {s} (medians of {len({r['rep'] for r in runs})} repetitions)\n")
        out.append("| target | req/s | p50 µs | p99 µs | added p50 µs | added p99 µs | proxy CPU µs/req | proxy ÷ upstream CPU | OTLP sink CPU µs/req | peak RSS MiB | req/s vs nginx-json | req/s vs haproxy |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        d50, d99 = med(runs, "direct", s, "p50_us"), med(runs, "direct", s, "p99_us")
        for t in targets:
            rps = med(runs, t, s, "rps")
            p50, p99 = med(runs, t, s, "p50_us"), med(runs, t, s, "p99_us")
            nj = rps / med(runs, "nginx-json", s, "rps") if "nginx-json" in targets else float("nan")
            hp = rps / med(runs, "haproxy", s, "rps") if "haproxy" in targets else float("nan")
            cpu = med(runs, t, s, "proxy_cpu_us") if t != "direct" else float("nan")
            ratio = med(runs, t, s, "cpu_ratio") if t != "direct" else float("nan")
            rss = med(runs, t, s, "peak_rss_mib")
            sink = med(runs, t, s, "sink_cpu_us")
            out.append(f"| {t} | {rps:.0f} | {p50:.0f} | {p99:.0f} | {p50 - d50:.0f} | {p99 - d99:.0f} | {cpu:.1f} | {ratio:.2f} | {sink:.1f} | {rss:.1f} | {nj:.2f} | {hp:.2f} |")
    other = statistics.median([r["other_cpu_s"] for r in runs]) if runs else 0
    out.append(f"\nOther CPU during a run (load generator and other tenants), median: {other:.1f} s.")
    return "\n".join(out)


def pb_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_field(number, payload):
    """A length-delimited protobuf field."""
    return pb_varint(number << 3 | 2) + pb_varint(len(payload)) + payload


def grpc_body():
    """The REST body's request as a framed gRPC ModelInferRequest: model_name, then the four FP64
    inputs with typed contents (shape [1, 1], fp64_contents packed), as tritonclient builds it."""
    inputs = b""
    for f in ("tenure", "monthly_charges", "support_calls", "usage_gb"):
        contents = pb_field(7, struct.pack("<d", 0.25))
        tensor = pb_field(1, f.encode()) + pb_field(2, b"FP64") + pb_field(3, b"\x01\x01") + pb_field(5, contents)
        inputs += pb_field(5, tensor)
    message = pb_field(1, b"churn") + pb_field(3, b"bench") + inputs
    return b"\x00" + struct.pack(">I", len(message)) + message


def run_h2load(url, conns, secs, body_file, headers):
    """h2load over h2c (prior knowledge), one thread, `conns` connections, one stream each.
    It prints no percentiles: the mean latency stands in for p50, the max for p99."""
    args = ["h2load", "-t1", f"-c{conns}", "-m1", f"-D{secs}", "--warm-up-time=1", "-d", str(body_file)]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    try:
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
        return {"rps": rps, "requests": int(done.group(1)), "p50_us": parse_duration_us(lat.group(3)),
                "p99_us": parse_duration_us(lat.group(2)), "errors": int(done.group(3)) + int(done.group(4))}
    except (AttributeError, ValueError) as e:
        raise RuntimeError(f"cannot parse h2load output ({e}):\n{out}") from e


def grpc_nginx_config(tmp, h2_port, h1_port, upstream):
    """nginx with an h2c listener (gRPC to grpc_pass, REST to proxy_pass) and an HTTP/1.1 one."""
    d = tmp / "nginx-grpc"
    d.mkdir(exist_ok=True)
    cfg = d / "nginx.conf"
    rest = """location / { proxy_pass http://model; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Request-Id $request_id; add_header X-Request-Id $request_id; }"""
    cfg.write_text(f"""
worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  log_format json escape=json {NGINX_JSON};
  access_log {d}/access.log json;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream model {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  upstream model_grpc {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 1000000; }}
  # h2load does not reconnect a connection nginx retires after keepalive_requests (1,000).
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{h2_port} http2;
    location /inference.GRPCInferenceService/ {{ grpc_pass grpc://model_grpc; grpc_set_header X-Request-Id $request_id; }}
    {rest}
  }}
  server {{ listen 127.0.0.1:{h1_port}; {rest} }}
}}
""")
    return cfg


def grpc_haproxy_config(tmp, port, upstream):
    """haproxy on one port (HTTP/1.1, and h2c by its preface); gRPC goes upstream over h2."""
    cfg = tmp / "haproxy-grpc.cfg"
    cfg.write_text(f"""
global
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{port}
  use_backend grpc if {{ req.hdr(content-type) -m beg application/grpc }}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{upstream}
backend grpc
  http-reuse always
  server s1 127.0.0.1:{upstream} proto h2
""")
    return cfg


def modelstamp_errors(admin):
    """Exchanges modelstamp counted as server errors (a gRPC status rides in an HTTP 200; the
    calls a load generator cuts when its time is up are 499s, the client's, and not counted)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^modelstamp_requests_total\{[^}]*status_class="5xx"\} (\S+)$', text, re.M))


def grpc_mode(a, procs, binary, tmp, up_port, upstream, otlp, sink, lua):
    """The proxied gRPC path's cost against the REST path's, through the same proxies, in one
    run: gRPC ModelInfer over h2c (h2load), the same request as REST JSON over h2c (h2load) and
    over HTTP/1.1 (wrk), 32 connections each."""
    grpc_file, rest_file = tmp / "body.grpc", tmp / "body-rest.json"
    grpc_file.write_bytes(grpc_body())
    rest_file.write_text(BODY)
    grpc_headers = ["content-type: application/grpc", "te: trailers"]
    scenarios = [
        ("grpc-h2c", "/inference.GRPCInferenceService/ModelInfer", lambda url: run_h2load(url, 32, a.seconds, grpc_file, grpc_headers)),
        ("rest-h2c", PATH, lambda url: run_h2load(url, 32, a.seconds, rest_file, ["content-type: application/json"])),
        ("rest-h1", PATH, lambda url: run_wrk(url, 32, a.seconds, lua)),
    ]
    targets = ["direct", "modelstamp", "nginx-json", "haproxy"]
    runs = []
    for rep in range(a.reps):
        for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
            port, h1_port, admin = free_port(), None, None
            if target == "direct":
                proc, port = None, up_port
            elif target == "modelstamp":
                admin = free_port()
                cfg = modelstamp_config(tmp, port, admin, up_port, otlp)
                proc = procs.start("modelstamp", [str(binary), "run", "--config", str(cfg)],
                                   env=dict(MODELSTAMP_ENV, MODELSTAMP_WORKERS="1"))
            elif target == "nginx-json":
                h1_port = free_port()
                proc = procs.start(target, ["nginx", "-c", str(grpc_nginx_config(tmp, port, h1_port, up_port))])
            else:
                proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(grpc_haproxy_config(tmp, port, up_port))])
            if proc:
                wait_port(port)
                run_wrk(f"http://127.0.0.1:{h1_port or port}{PATH}", 32, 1, lua)  # warm-up
            proxy_pids = tree(proc.pid) if proc else []
            for name, path, fn in scenarios:
                p = h1_port if name == "rest-h1" and h1_port else port
                url = f"http://127.0.0.1:{p}{path}"
                before = modelstamp_errors(admin) if admin else 0
                r = measure(lambda: fn(url), proxy_pids, [upstream.pid], tree(sink.pid) if sink else [])
                if admin:
                    r["errors"] += modelstamp_errors(admin) - before
                r.update(target=target, scenario=name, rep=rep)
                runs.append(r)
                print(f"rep {rep} {target:<11} {name:<9} {r['rps']:>9.0f} req/s  mean/p50 {r['p50_us']:>7.0f} us  "
                      f"proxy {r['proxy_cpu_us']:>5.1f} us/req  ratio {r['cpu_ratio']:.2f}  errors {r['errors']}  "
                      f"other CPU {r['other_cpu_s']:.1f}s", flush=True)
            if proc:
                procs.stop(proc)
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))
    print(f"\n### gRPC vs REST (medians of {a.reps} repetitions; h2load's mean latency in the p50 column, wrk's p50 for rest-h1)\n")
    print("| target | scenario | req/s | latency µs | proxy CPU µs/req | proxy ÷ upstream CPU | CPU vs its rest-h1 | req/s vs nginx-json | req/s vs haproxy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        for name, _, _ in scenarios:
            rps, lat = med(runs, t, name, "rps"), med(runs, t, name, "p50_us")
            cpu = med(runs, t, name, "proxy_cpu_us") if t != "direct" else float("nan")
            ratio = med(runs, t, name, "cpu_ratio") if t != "direct" else float("nan")
            vs_rest = cpu / med(runs, t, "rest-h1", "proxy_cpu_us") if t != "direct" else float("nan")
            nj, hp = rps / med(runs, "nginx-json", name, "rps"), rps / med(runs, "haproxy", name, "rps")
            print(f"| {t} | {name} | {rps:.0f} | {lat:.0f} | {cpu:.1f} | {ratio:.2f} | {vs_rest:.2f} | {nj:.2f} | {hp:.2f} |")


def versions_mode(a, procs, binary, tmp, up_port, upstream, otlp, lua):
    rows = []
    sizes = [int(x) for x in a.versions.split(",")]
    # Interleaved like the main mode (the host drifts): each repetition runs every size, in
    # an order rotated by one.
    for rep in range(a.reps):
        for n in sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]:
            port = free_port()
            cfg = modelstamp_config(tmp, port, free_port(), up_port, otlp, versions=n)
            proc = procs.start("modelstamp", [str(binary), "run", "--config", str(cfg)], env=MODELSTAMP_ENV)
            wait_port(port)
            url = f"http://127.0.0.1:{port}{PATH}"
            run_wrk(url, 32, 1, lua)
            pids = tree(proc.pid)
            r = measure(lambda: run_wrk(url, 32, a.seconds, lua), pids, [upstream.pid], [])
            r.update(versions=n, rss=peak_rss_kib(pids) / 1024)
            rows.append(r)
            print(f"versions {n:>5} rep {rep}: {r['rps']:.0f} req/s, proxy {r['proxy_cpu_us']:.1f} us/req, ratio {r['cpu_ratio']:.2f}, peak RSS {r['rss']:.1f} MiB", flush=True)
            procs.stop(proc)
    print("\n| configured versions | req/s | proxy CPU µs/req | proxy ÷ upstream CPU | peak RSS MiB |\n|---|---|---|---|---|")
    for n in sorted({r["versions"] for r in rows}):
        sel = [r for r in rows if r["versions"] == n]
        m = lambda k: statistics.median(r[k] for r in sel)
        print(f"| {n} | {m('rps'):.0f} | {m('proxy_cpu_us'):.1f} | {m('cpu_ratio'):.2f} | {m('rss'):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
