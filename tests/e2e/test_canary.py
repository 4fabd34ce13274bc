"""[canary] through the real binary and a real Prometheus: a 50/50 split in front of the demo
model server, then `modelstamp compare` from the sidecar's own windows and from Prometheus's
data (a fleet's view) must reach the same verdict on the same numbers."""

import json
import random
import subprocess
import time

from conftest import BIN, SplitStack, wait_until


def test_compare_from_prometheus_agrees_with_the_sidecar(procs):
    stack = SplitStack(procs)
    admin, prom = stack.admin, stack.prom
    rng = random.Random(5)
    for i in range(400):
        stack.infer([round(rng.gauss(0, 1), 4) for _ in range(4)], f"user-{i}")

    def scraped_all():
        r = stack.query('sum(modelstamp_requests_total{model="churn"})')
        return r and float(r[0]["value"][1]) >= 400

    wait_until(scraped_all, what="Prometheus has every request")
    # increase() extrapolates from the last sample to the window's end (up to one 1 s scrape):
    # a ratio of (span + 1 s) / span over the span of samples the series has. Right after the
    # traffic that span can be 6 s (+16 %); ten more seconds of flat samples bound it under 10 %.
    time.sleep(10)

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
