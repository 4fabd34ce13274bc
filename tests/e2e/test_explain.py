"""[rca] from a Prometheus server's history: an upstream field turns NULL on every version of a
split in front of the demo model server; `modelstamp explain --prometheus` ranks the upstream
data first and names the feature's source, like the sidecar's own explanation."""

import json
import random
import subprocess

from conftest import BIN, SplitStack, wait_until


def test_explain_from_prometheus_names_the_upstream_source(procs):
    stack = SplitStack(procs, "[inspect]\nmin_samples = 30\n")
    admin, prom = stack.admin, stack.prom
    rng = random.Random(9)
    for i in range(300):
        row = [round(min(rng.gauss(0, 0.7), 1.9), 4) for _ in range(4)]
        if i >= 100:
            row[3] = None  # usage_gb turns NULL upstream, for every version
        assert stack.infer(row, f"u{i}") == 200

    def scraped():
        r = stack.query('sum(modelstamp_inspected_rows_total{model="churn"})')
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
        assert top["title"].startswith("feature `usage_gb` NULL on "), top["title"]
        assert top["title"].endswith("on all versions: upstream source telemetry.daily_usage.gb"), top["title"]
        assert not any(c["rule"].startswith("version_") for c in e["causes"]), e["causes"]
    print(explain("--prometheus", prom))
