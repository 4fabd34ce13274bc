"""Process fixtures for the e2e suite: every process is started here, on free loopback ports,
and stopped by its own PID (whole process group) when the test ends."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MODELSTAMP_BIN", str(ROOT / "target" / "debug" / "modelstamp"))
ROTEL = os.environ.get("ROTEL_AGENT", "rotel-agent")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling, report the last failure
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")


def http(method, url, body=None, headers=None, timeout=10, context=None):
    data = body.encode() if isinstance(body, str) else body
    headers = dict(headers or {})
    if data is not None:
        # urllib would send a form content type; inference bodies are JSON.
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def infer_body(i=0):
    features = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
    return json.dumps({"id": f"e2e-{i}", "inputs": [
        {"name": f, "datatype": "FP64", "shape": [1, 1], "data": [((i * 7 + k) % 10) / 10 - 0.5]}
        for k, f in enumerate(features)]})


class Procs:
    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.procs = []

    def start(self, name, args, env=None, cwd=None):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True, cwd=cwd)
        self.procs.append((name, p))
        return p

    def stop(self, name):
        """Stop one process group (e.g. to simulate an outage) and wait for it."""
        for n, p in self.procs:
            if n == name and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def log(self, name):
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _procs():
    with tempfile.TemporaryDirectory(prefix="modelstamp-e2e-") as tmp:
        p = Procs(tmp)
        try:
            yield p
        finally:
            p.stop_all()


@pytest.fixture
def procs():
    yield from _procs()


@pytest.fixture(scope="module")
def module_procs():
    """Processes shared by a whole test module (a stack that is slow to build)."""
    yield from _procs()


class Stack:
    """Demo model server + modelstamp (+ optional collector) on free ports."""

    def __init__(self, procs, otlp_endpoint=None, sampler="always_on", env=None, extra="", ready=True):
        """`ready=False`: the admin API is not plain HTTP (TLS); call `wait_ready` with a check."""
        self.procs = procs
        self.model_port, self.port, self.admin_port = free_port(), free_port(), free_port()
        procs.start("model", [BIN, "demo-model", "--listen", f"127.0.0.1:{self.model_port}"])
        traces = f'sampler = "{sampler}"\n'
        if otlp_endpoint:
            traces += f'otlp_endpoint = "{otlp_endpoint}"\n'
        cfg = procs.tmp / "modelstamp.toml"
        cfg.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
[admin]
listen = "127.0.0.1:{self.admin_port}"
[access_log]
target = "{procs.tmp / 'access.log'}"
[registry]
path = "{ROOT / 'config' / 'registry.yaml'}"
[traces]
service_name = "modelstamp-e2e"
{traces}
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{self.model_port}"
serves = "@champion"
match = {{ open_inference = true }}
{extra}
""")
        procs.start("modelstamp", [BIN, "run", "--config", str(cfg)], env=env)
        if ready:
            self.wait_ready(lambda: http("GET", f"{self.admin}/readyz")[0] == 200)

    def wait_ready(self, check):
        wait_until(check, what="modelstamp ready")
        wait_until(lambda: http("GET", f"http://127.0.0.1:{self.model_port}/v2/health/ready")[0] == 200,
                   what="model server ready")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def infer(self, version=None, trace_id=None, i=0):
        path = f"/v2/models/churn/versions/{version}/infer" if version else "/v2/models/churn/infer"
        headers = {"content-type": "application/json"}
        if trace_id:
            headers["traceparent"] = f"00-{trace_id}-{i + 1:016x}-01"
        return http("POST", self.url + path, infer_body(i), headers)


class SplitStack:
    """The demo model server behind a 50/50 canary split (champion/challenger aliases of
    config/registry.yaml), modelstamp, and a Prometheus scraping it every second."""

    def __init__(self, procs, extra=""):
        model_port, self.port, admin_port, prom_port = free_port(), free_port(), free_port(), free_port()
        procs.start("model", [BIN, "demo-model", "--listen", f"127.0.0.1:{model_port}"])
        cfg = procs.tmp / "modelstamp.toml"
        cfg.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[access_log]
target = "off"
[registry]
path = "{ROOT / 'config' / 'registry.yaml'}"
{extra}
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{model_port}"
match = {{ open_inference = true }}
[[routes.backends]]
version = "@champion"
weight = 50
[[routes.backends]]
version = "@challenger"
weight = 50
[routes.canary]
sticky_header = "x-user-id"
min_requests = 50
""")
        procs.start("modelstamp", [BIN, "run", "--config", str(cfg)])
        self.admin = f"http://127.0.0.1:{admin_port}"
        wait_until(lambda: http("GET", f"{self.admin}/readyz")[0] == 200, what="modelstamp ready")
        wait_until(lambda: http("GET", f"http://127.0.0.1:{model_port}/v2/health/ready")[0] == 200, what="model ready")
        prom_cfg = procs.tmp / "prometheus.yml"
        prom_cfg.write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: modelstamp
    static_configs: [{{targets: ["127.0.0.1:{admin_port}"]}}]
""")
        procs.start("prometheus", ["prometheus", f"--config.file={prom_cfg}", f"--storage.tsdb.path={procs.tmp / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"])
        self.prom = f"http://127.0.0.1:{prom_port}"
        wait_until(lambda: self.query('up{job="modelstamp"}'), what="first scrape")

    def query(self, promql):
        status, _, body = http("GET", f"{self.prom}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def infer(self, row, user):
        features = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
        body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1], "data": [row[k]]}
                                      for k, f in enumerate(features)]})
        return http("POST", f"http://127.0.0.1:{self.port}/v2/models/churn/infer", body, {"x-user-id": user})[0]
