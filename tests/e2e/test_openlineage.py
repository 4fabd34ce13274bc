"""[explain] OpenLineage from real emitters: the openlineage-python client (gzip, API key) and a
dbt project run through `dbt-ol` (dbt-duckdb). A dbt rebuild of an upstream table flags the
model version trained on it, and `explain` names the dbt job."""

import json
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from conftest import BIN, Stack, http, wait_until

TOKEN = "openlineage-e2e-token-0123"
VENV_BIN = Path(sys.executable).parent


def versions(stack):
    status, _, body = http("GET", f"{stack.admin}/versions")
    assert status == 200
    return {v["version"]: v for v in json.loads(body)["models"][0]["versions"]}


def explain(stack, *extra):
    out = subprocess.run([BIN, "explain", "--model", "churn", "--since", "10m", "--admin", stack.admin, *extra],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_openlineage_python_client_is_read(procs):
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import DatasetEvent, Job, OutputDataset, Run, RunEvent, RunState, StaticDataset
    from openlineage.client.facet_v2 import dataset_version_dataset
    from openlineage.client.transport.http import ApiKeyTokenProvider, HttpCompression, HttpConfig, HttpTransport
    from openlineage.client.uuid import generate_new_uuid

    stack = Stack(procs, env={"MODELSTAMP_ADMIN_TOKEN": TOKEN})
    config = HttpConfig(url=stack.admin, auth=ApiKeyTokenProvider({"apiKey": TOKEN}),
                        compression=HttpCompression.GZIP)
    client = OpenLineageClient(transport=HttpTransport(config))
    now = datetime.now(timezone.utc).isoformat()
    # The training data of version 1 (config/registry.yaml), rewritten by a pipeline run.
    train = OutputDataset(namespace="s3://ml-data", name="churn/2026-10-01/train.parquet",
                          facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="f00dcafe")})
    run = Run(runId=str(generate_new_uuid()))
    job = Job(namespace="airflow-prod", name="churn_training_snapshot")
    answer = client.transport.emit(RunEvent(eventType=RunState.COMPLETE, eventTime=now, run=run, job=job,
                                            producer="https://example.com/e2e", outputs=[train]))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["datasets"][0]["outcome"] == "matched", body
    assert {"model": "churn", "version": "1"} in body["stale"], body
    flag = versions(stack)["1"]["stale"]
    assert (flag["latest"], flag["job"]["name"], flag["job"]["run_id"]) == ("f00dcafe", "churn_training_snapshot", run.runId)

    # A dataset no record reads: accepted, answered and counted as unmatched.
    other = DatasetEvent(eventTime=now, producer="https://example.com/e2e",
                         dataset=StaticDataset(namespace="postgres://db:5432", name="sales.orders",
                                               facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="7")}))
    answer = client.transport.emit(other)
    assert answer.status_code == 201 and answer.json()["datasets"][0]["outcome"] == "unmatched", answer.text
    # Without the key: refused.
    bare = OpenLineageClient(transport=HttpTransport(HttpConfig(url=stack.admin)))
    try:
        bare.transport.emit(other)
        raise AssertionError("a call without the key was accepted")
    except Exception as e:  # noqa: BLE001 - requests raises HTTPError on 401
        assert "401" in str(e), e
    _, _, metrics = http("GET", f"{stack.admin}/metrics")
    text = metrics.decode()
    assert 'modelstamp_lineage_events_total{source="openlineage",outcome="matched"} 1' in text
    assert 'modelstamp_lineage_events_total{source="openlineage",outcome="unmatched"} 1' in text


DBT_PROJECT = """name: warehouse
version: "1.0"
profile: warehouse
models:
  warehouse:
    +materialized: table
"""


def infer_rows(stack, rows):
    features = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
    for i, row in enumerate(rows):
        body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1], "data": [v]}
                                      for f, v in zip(features, row)]})
        status, _, _ = http("POST", f"{stack.url}/v2/models/churn/infer", body)
        assert status == 200


def test_a_dbt_rebuild_flags_the_model_trained_on_it_and_explain_names_the_job(procs):
    # The dbt model `accounts` builds warehouse.main.accounts, which the registry calls
    # crm.accounts (version 1's upstream table, the source of its `tenure`).
    stack = Stack(procs, env={"MODELSTAMP_ADMIN_TOKEN": TOKEN},
                  extra='[openlineage]\naliases = { "warehouse.main.accounts" = "crm.accounts" }\n'
                        '[inspect]\nmin_samples = 30\n')
    # The sidecar was only given the healthy distribution so far.
    assert versions(stack)["1"]["stale"] is None
    project = procs.tmp / "dbt"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(DBT_PROJECT)
    (project / "profiles.yml").write_text(
        f"warehouse:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {project / 'warehouse.duckdb'}\n      threads: 1\n")
    # tenure_months turns into days upstream: the unit change the model never saw.
    (project / "models" / "accounts.sql").write_text("select 1 as id, 24 * 30 as tenure_months\n")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "DO_NOT_TRACK": "1",
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "OPENLINEAGE_URL": stack.admin,
           "OPENLINEAGE_API_KEY": TOKEN, "OPENLINEAGE_NAMESPACE": "dbt"}
    out = subprocess.run([str(VENV_BIN / "dbt-ol"), "run", "--project-dir", str(project), "--profiles-dir",
                          str(project)], capture_output=True, text=True, env=env, cwd=project, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    flag = wait_until(lambda: versions(stack)["1"]["stale"], what="version 1 flagged stale")
    assert flag["dataset"] == "crm.accounts", flag
    assert (flag["job"]["namespace"], flag["job"]["name"]) == ("dbt", "warehouse.main.warehouse.accounts"), flag
    assert "openlineage" in flag["seen_in"].lower() and "integration/dbt" in flag["seen_in"], flag

    # Traffic: tenure now sits at the top of its range; the rest as in training.
    rng = random.Random(3)
    infer_rows(stack, [[round(rng.uniform(1.6, 2.4), 3)] + [round(rng.gauss(0, 1), 3) for _ in range(3)]
                       for _ in range(200)])
    wait_until(lambda: json.loads(explain(stack, "--json"))["causes"], what="a cause")
    e = json.loads(explain(stack, "--json"))
    top = e["causes"][0]
    assert top["rule"] == "upstream_drift", e["causes"]
    assert top["feature"] == "tenure" and top["source"] == "crm.accounts.tenure_months", top
    assert top["job"] == "dbt/warehouse.main.warehouse.accounts", top
    assert "last written by job dbt/warehouse.main.warehouse.accounts" in top["title"], top["title"]
    # Version 1's predictions moved after the rebuild: its stale lineage moves with a symptom,
    # so it is a cause (not a risk), naming the same job.
    stale = [c for c in e["causes"] if c["rule"] == "stale_lineage"]
    assert stale and stale[0]["job"] == "dbt/warehouse.main.warehouse.accounts", e
    assert stale[0]["dataset"] == "crm.accounts" and stale[0]["version"] == "1", stale
    print(explain(stack))
