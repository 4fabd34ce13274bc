"""[canary] through the real binary and a real Prometheus: a 50/50 split in front of the demo
model server, then `modelstamp compare` from the sidecar's own windows and from Prometheus's
data (a fleet's view) must reach the same verdict on the same numbers."""

import json
import random
import subprocess

from conftest import BIN, ROOT, free_port, http, wait_until
from test_traces import prom_get


def test_compare_from_prometheus_agrees_with_the_sidecar(procs):
    model_port, port, admin_port, prom_port = free_port(), free_port(), free_port(), free_port()
    procs.start("model", [BIN, "demo-model", "--listen", f"127.0.0.1:{model_port}"])
    cfg = procs.tmp / "modelstamp.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[access_log]
target = "off"
[registry]
path = "{ROOT / 'config' / 'registry.yaml'}"
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
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: http("GET", f"{admin}/readyz")[0] == 200, what="modelstamp ready")
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
    prom = f"http://127.0.0.1:{prom_port}"
    wait_until(lambda: prom_get(prom, "/api/v1/query", query='up{job="modelstamp"}')["result"], what="first scrape")
    rng = random.Random(5)
    features = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
    for i in range(400):
        body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1],
                                       "data": [round(rng.gauss(0, 1), 4)]} for f in features]})
        http("POST", f"http://127.0.0.1:{port}/v2/models/churn/infer", body, {"x-user-id": f"user-{i}"})

    def scraped_all():
        r = prom_get(prom, "/api/v1/query", query='sum(modelstamp_requests_total{model="churn"})')["result"]
        return r and float(r[0]["value"][1]) >= 400

    wait_until(scraped_all, what="Prometheus has every request")

    def compare(*extra):
        out = subprocess.run([BIN, "compare", "--model", "churn", "--json", "--admin", admin, *extra],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    local = compare()
    fleet = compare("--prometheus", prom, "--window", "2m")
    assert fleet["source"] == prom and local["source"] == "sidecar"
    for role in ("baseline", "candidate"):
        assert fleet[role]["version"] == local[role]["version"]
        assert fleet[role]["lineage_id"] == local[role]["lineage_id"]
        n, m = local[role]["requests"], fleet[role]["requests"]
        assert abs(n - m) <= 0.15 * n, (role, n, m)  # increase() extrapolates to the window edges
        assert local[role]["errors"] == fleet[role]["errors"] or abs(local[role]["errors"] - fleet[role]["errors"]) <= 2
    assert local["baseline"]["requests"] + local["candidate"]["requests"] == 400
    assert 150 <= local["candidate"]["requests"] <= 250, "50/50 split"
    assert fleet["lineage_diff"] == local["lineage_diff"] and any(
        d["field"] == "training_data.digest" for d in local["lineage_diff"])
    assert fleet["verdict"] == local["verdict"], (fleet["reasons"], local["reasons"])
    print("sidecar:", local["verdict"], local["reasons"])
    print("prometheus:", fleet["verdict"], fleet["reasons"])
    table = subprocess.run([BIN, "compare", "--model", "churn", "--admin", admin, "--prometheus", prom, "--window", "2m"],
                           capture_output=True, text=True).stdout
    print(table)
    assert "verdict:" in table
