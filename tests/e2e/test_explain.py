"""[rca] from a Prometheus server's history: an upstream field turns NULL on every version of a
split in front of the demo model server; `modelstamp explain --prometheus` ranks the upstream
data first and names the feature's source, like the sidecar's own explanation."""

import json
import random
import subprocess

from conftest import BIN, ROOT, free_port, http, wait_until
from test_traces import prom_get


def test_explain_from_prometheus_names_the_upstream_source(procs):
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
[inspect]
min_samples = 30
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
    rng = random.Random(9)
    features = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
    for i in range(300):
        row = [round(min(rng.gauss(0, 0.7), 1.9), 4) for _ in features]
        if i >= 100:
            row[3] = None  # usage_gb turns NULL upstream, for every version
        body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1], "data": [row[k]]}
                                      for k, f in enumerate(features)]})
        assert http("POST", f"http://127.0.0.1:{port}/v2/models/churn/infer", body, {"x-user-id": f"u{i}"})[0] == 200

    def scraped():
        r = prom_get(prom, "/api/v1/query", query='sum(modelstamp_inspected_rows_total{model="churn"})')["result"]
        return r and float(r[0]["value"][1]) >= 300

    wait_until(scraped, what="Prometheus has every inspected row")

    def explain(*extra):
        out = subprocess.run([BIN, "explain", "--model", "churn", "--since", "5m", "--admin", admin, *extra],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    fleet = json.loads(explain("--json", "--prometheus", prom))
    local = json.loads(explain("--json"))
    for e in (fleet, local):
        top = e["causes"][0]
        assert top["rule"] == "upstream_data", e["causes"]
        assert "feature `usage_gb` NULL rate 0% → " in top["title"], top["title"]
        assert top["title"].endswith("on all versions: upstream source telemetry.daily_usage.gb"), top["title"]
        assert not any(c["rule"].startswith("version_") for c in e["causes"]), e["causes"]
    print(explain("--prometheus", prom))
