"""[deploy]: the deployment kit checked with real tools. promtool checks and unit-tests the rules;
every PromQL expression of the Grafana dashboard and the rules runs against a real Prometheus that
scraped a running modelstamp under demo traffic; kustomize (kubectl) renders the Kubernetes
manifests, whose config passes `modelstamp check`; the Helm chart is checked for structure."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import yaml

from conftest import BIN, ROOT, Stack, free_port, http, wait_until

DEPLOY = ROOT / "deploy"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_gb"]


def run(args, **kw):
    out = subprocess.run(args, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out.stdout


def test_promtool_checks_and_unit_tests_the_rules(tmp_path):
    print(run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "rules.yaml")]))
    print(run(["promtool", "test", "rules", "rules_test.yaml"], cwd=DEPLOY / "prometheus"))
    # The compose stack's Prometheus config, with its rule file path made local.
    cfg = (DEPLOY / "compose" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/rules.yaml", str(DEPLOY / "prometheus" / "rules.yaml"))
    (tmp_path / "prometheus.yml").write_text(cfg)
    run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")])


def test_kubernetes_manifests_render_with_native_sidecar_probes_and_a_valid_config(tmp_path):
    docs = [d for d in yaml.safe_load_all(run([KUBECTL, "kustomize", str(DEPLOY / "kubernetes")])) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service"], kinds
    by_kind = {d["kind"]: d for d in docs}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    assert sidecar["name"] == "modelstamp" and sidecar["restartPolicy"] == "Always", "a native sidecar"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert sidecar["resources"]["requests"]
    assert all("subPath" not in m for m in sidecar["volumeMounts"]), "subPath mounts never see ConfigMap updates"
    cm = by_kind["ConfigMap"]
    assert cm["metadata"]["name"] == pod["volumes"][0]["configMap"]["name"], "stable name: hot reload, no rollout"
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    run([BIN, "check", "--config", str(tmp_path / "modelstamp.toml")])
    monitor = by_kind["PodMonitor"]["spec"]
    assert monitor["podMetricsEndpoints"][0]["port"] == "admin"
    assert monitor["selector"]["matchLabels"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]
    ports = {p["targetPort"] for p in by_kind["Service"]["spec"]["ports"]}
    assert ports == {"http", "admin"}


def values_paths(values, prefix=""):
    for k, v in values.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from values_paths(v, f"{prefix}{k}.")


def test_helm_chart_templates_reference_defined_values_and_render_the_expected_kinds(tmp_path):
    chart = DEPLOY / "helm" / "modelstamp"
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "modelstamp"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    defined = set(values_paths(values))
    templates = {p.name: p.read_text() for p in (chart / "templates").iterdir()}
    used = {m for t in templates.values() for m in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", t)}
    assert used and used <= defined, f"undefined values: {used - defined}"
    kinds = sorted(k for t in templates.values() for k in re.findall(r"^kind: (\w+)$", t, re.M))
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service"], kinds
    assert "restartPolicy: Always" in templates["deployment.yaml"]
    # The file registry the chart ships by default is a valid registry.
    (tmp_path / "registry.yaml").write_text(values["modelstamp"]["registry"]["file"])
    (tmp_path / "m.toml").write_text('[registry]\npath = "registry.yaml"\n[[routes]]\nmodel = "churn"\n'
                                     'upstream = "127.0.0.1:8081"\nserves = "@champion"\n')
    run([BIN, "check", "--config", str(tmp_path / "m.toml")])
    helm = shutil.which("helm")
    if helm:  # not in Debian or PyPI; used when present
        run([helm, "lint", str(chart)])
        rendered = [d for d in yaml.safe_load_all(run([helm, "template", "t", str(chart)])) if d]
        assert sorted(d["kind"] for d in rendered) == ["ConfigMap", "Deployment", "PodMonitor", "Service"]


def test_the_committed_dashboard_is_the_generator_output(tmp_path):
    run([sys.executable, str(DEPLOY / "grafana" / "build_dashboard.py"), str(tmp_path / "d.json")])
    assert (tmp_path / "d.json").read_text() == (DEPLOY / "grafana" / "modelstamp.json").read_text()
    d = json.loads((tmp_path / "d.json").read_text())
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"model", "version", "baseline", "candidate", "traces", "admin_url"} <= names
    assert any(t.get("exemplar") for p in d["panels"] for t in p["targets"]), "latency panels show exemplars"


def test_collector_and_compose_configs_are_consistent():
    otel = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    for name, pipe in otel["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipe.get(kind, []):
                assert component in otel[kind], f"{name}: {kind} {component} is not defined"
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yaml").read_text())
    assert {"model", "modelstamp", "prometheus", "grafana", "otel-collector", "tempo"} <= set(compose["services"])
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert (DEPLOY / "compose" / src).resolve().exists(), f"compose mounts a missing file: {src}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER nonroot" in dockerfile and "HEALTHCHECK" in dockerfile and dockerfile.count("FROM ") == 2


# Expressions that may legitimately return nothing on a healthy demo (no such event happened).
MAY_BE_EMPTY = ("version_mismatch", "prediction_class", "shadow_agreement", "canary_weight", "ModelstampCandidate", "ModelstampStale",
                "ModelstampDrift", "ModelstampRegistryDown", "ModelstampCanaryRolledBack", "ModelstampInspectionSkipping",
                'against="version:', "ModelstampVersionMismatch")
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "5m", "$model": "churn", "$version": ".*",
                 "$baseline": "1", "$candidate": "2"}


def dashboard_exprs():
    d = json.loads((DEPLOY / "grafana" / "modelstamp.json").read_text())
    for p in d["panels"]:
        for t in p["targets"]:
            yield f'panel "{p["title"]}"', t["expr"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            yield f'variable {v["name"]}', v["query"]["query"]


def rule_exprs():
    for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())["groups"]:
        for r in g["rules"]:
            yield r.get("record") or r["alert"], r["expr"]


def substitute(expr):
    for k, v in SUBSTITUTIONS.items():
        expr = expr.replace(k, v)
    return expr


def test_every_dashboard_and_rule_expression_runs_on_a_real_prometheus(procs):
    stack = Stack(procs)
    port = free_port()
    cfg = procs.tmp / "prometheus.yml"
    cfg.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{DEPLOY / 'prometheus' / 'rules.yaml'}"]
scrape_configs:
  - job_name: modelstamp
    static_configs: [{{targets: ["127.0.0.1:{stack.admin_port}"]}}]
""")
    procs.start("prometheus", ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={procs.tmp / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"])
    base = f"http://127.0.0.1:{port}"

    def query(expr):
        status, _, body = http("GET", f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        return status, json.loads(body)

    wait_until(lambda: query('up{job="modelstamp"}')[1].get("data", {}).get("result"), what="first scrape")
    rng = np.random.default_rng(11)
    deadline = time.time() + 12
    i = 0
    while time.time() < deadline or i < 300:
        version = "2" if i % 2 else "1"
        row = [float(x) for x in np.round(rng.normal(0, 1, 4), 4)]
        if version == "2" and i % 4 == 1:
            row[3] = None  # usage_gb NULL on a quarter of the candidate's rows
        body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1], "data": [row[k]]}
                                      for k, f in enumerate(FEATURES)]})
        http("POST", f"{stack.url}/v2/models/churn/versions/{version}/infer", body)
        i += 1
    time.sleep(3)  # a few more scrapes and rule evaluations
    empty, checked = [], 0
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        if expr.startswith("label_values("):
            m = re.match(r"label_values\((.*), (\w+)\)$", substitute(expr))
            status, answer = query(f"count by ({m.group(2)}) ({m.group(1)})")
        else:
            status, answer = query(substitute(expr))
        assert status == 200 and answer["status"] == "success", f"{where}: {expr}: {answer}"
        checked += 1
        if not answer["data"]["result"]:
            empty.append(where)
            assert any(k in where or k in expr for k in MAY_BE_EMPTY), f"{where} returned no data: {expr}"
    print(f"{checked} expressions ran; empty where allowed: {empty}")
    # A healthy file-registry sidecar raises none of these.
    for quiet in ("ModelstampRegistryDown", "ModelstampVersionMismatch", "ModelstampStaleLineageLive",
                  "ModelstampInspectionSkipping"):
        assert quiet in empty, f"{quiet} fires on a healthy stack"
    # The NULLs fire the data-quality alert's expression, and only for the candidate's usage_gb.
    _, spike = query(next(e for n, e in rule_exprs() if n == "ModelstampDataQualitySpike"))
    labels = [r["metric"] for r in spike["data"]["result"]]
    assert [(l["version"], l["feature"], l["issue"]) for l in labels] == [("2", "usage_gb", "null")], labels
