"""[inspection] through the real binary: drift gauges checked against an independent
implementation (scipy's Jensen-Shannon distance, numpy PSI) on the very samples sent, and the
data-quality event a feature turning NULL produces, with its upstream source."""

import json
import re

import numpy as np
import pytest
import yaml
from scipy.spatial.distance import jensenshannon

from conftest import ROOT, Stack, http, wait_until

FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
REGISTRY = yaml.safe_load((ROOT / "config" / "registry.yaml").read_text())["models"]["churn"]["versions"]


def psi(expected, actual):
    """PSI as Evidently computes it: shares, zero shares replaced by 0.0001."""
    e = np.asarray(expected, float) / np.sum(expected)
    a = np.asarray(actual, float) / np.sum(actual)
    e = np.where(e == 0, 1e-4, e)
    a = np.where(a == 0, 1e-4, a)
    return float(np.sum((a - e) * np.log(a / e)))


def binned(values, edges):
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


def drift_series(text):
    out = {}
    for m in re.finditer(r'^modelstamp_drift\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["version"], labels["signal"], labels["statistic"], labels["against"])] = float(m.group(2))
    return out


def send(stack, version, row, i):
    body = json.dumps({"id": f"drift-{i}", "inputs": [
        {"name": f, "datatype": "FP64", "shape": [1, 1], "data": [row[k]]} for k, f in enumerate(FEATURES)]})
    status, _, resp = http("POST", f"{stack.url}/v2/models/churn/versions/{version}/infer", body)
    return status, json.loads(resp) if status == 200 else None


def test_drift_matches_scipy_and_numpy_on_the_same_samples(procs):
    stack = Stack(procs)
    rng = np.random.default_rng(7)
    sent, predicted = {}, {}
    for version, shift in (("1", 0.0), ("2", 0.6)):
        rows = np.round(rng.normal(shift, 1.0, size=(150, 4)), 6)
        rows[:, 2] = np.minimum(rows[:, 2], 1.9)  # version 2 rejects support_calls > 2
        sent[version], predicted[version] = rows, []
        for i, row in enumerate(rows):
            status, out = send(stack, version, [float(x) for x in row], i)
            assert status == 200
            predicted[version].append(out["outputs"][0]["data"][0])

    def settled():
        _, _, text = http("GET", f"{stack.admin}/metrics")
        text = text.decode()
        want = 'modelstamp_drift_window_samples{model="churn",version="%s",signal="prediction"} 150'
        return text if all(want % v in text for v in ("1", "2")) else None

    series = drift_series(wait_until(settled, what="both versions' windows complete"))
    checked = 0
    for version in ("1", "2"):
        record = REGISTRY[version]
        signals = {"prediction": (predicted[version], record["prediction"]["reference"])}
        for k, f in enumerate(FEATURES):
            signals[f"feature:{f}"] = (sent[version][:, k], record["input_schema"][k]["reference"])
        for signal, (values, ref) in signals.items():
            counts = binned(np.asarray(values), np.asarray(ref["edges"]))
            for stat, want in (("psi", psi(ref["fractions"], counts)),
                               ("js", float(jensenshannon(ref["fractions"], counts)))):
                got = series[(version, signal, stat, "reference")]
                assert abs(got - want) <= 1e-9, (version, signal, stat, got, want)
                checked += 1
        other = "2" if version == "1" else "1"
        edges = np.asarray(record["input_schema"][0]["reference"]["edges"])
        mine, theirs = binned(sent[version][:, 0], edges), binned(sent[other][:, 0], edges)
        got = series[(version, "feature:tenure", "js", f"version:{other}")]
        assert abs(got - float(jensenshannon(theirs, mine))) <= 1e-9
        got = series[(version, "feature:tenure", "psi", f"version:{other}")]
        assert abs(got - psi(theirs, mine)) <= 1e-9
        checked += 2
    assert checked == 24
    print(f"{checked} drift values match scipy/numpy within 1e-9, e.g. "
          f"PSI(tenure, v2 vs reference) = {series[('2', 'feature:tenure', 'psi', 'reference')]:.6f}")


def test_a_feature_turning_null_raises_one_event_naming_its_upstream_source(procs):
    stack = Stack(procs)
    rng = np.random.default_rng(3)
    for i in range(140):
        row = [float(x) for x in np.round(rng.normal(0, 0.5, 4), 6)]
        if i >= 100:
            row[3] = None  # usage_gb turns NULL upstream: the model server imputes, answers 200
        status, _ = send(stack, "2", row, i)
        assert status == 200
    series = 'modelstamp_feature_issues_total{model="churn",version="2",feature="usage_gb",issue="null"} 40'
    wait_until(lambda: series in http("GET", f"{stack.admin}/metrics")[2].decode(), what="null issues counted")
    log = wait_until(lambda: (lambda t: t if "Data-quality issue rate crossed" in t else None)(procs.log("modelstamp")),
                     what="data-quality event")
    events = [l for l in log.splitlines() if "Data-quality issue rate crossed" in l]
    assert len(events) == 1, events
    assert "telemetry.daily_usage.gb" in events[0] and 'issue="null"' in events[0] and "version=2" in events[0]
    print(events[0])
