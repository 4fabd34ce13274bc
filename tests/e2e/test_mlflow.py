"""[mlflow-e2e] on the real stack: an MLflow server (sqlite) holding two versions trained from a
throwaway git repo, MLServer (mlserver-mlflow runtime) serving both, modelstamp with the mlflow
registry backend in front, tritonclient driving traffic, and Prometheus scraping modelstamp."""

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from conftest import BIN, ROOT, free_port, http, infer_body, wait_until
from test_traces import prom_get, prometheus

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_gb"]


class MlflowStack:
    def __init__(self, procs):
        self.procs = procs
        tmp = procs.tmp
        self.mlflow_port = free_port()
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        procs.start("mlflow", [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                               "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(self.mlflow_port)], env=env)
        wait_until(lambda: http("GET", f"{self.mlflow}/health")[0] == 200, timeout=120, what="mlflow server")
        # A throwaway repo, so MLflow records a real git commit for each run.
        self.repo = tmp / "repo"
        self.repo.mkdir()
        (self.repo / "train.py").write_text((HERE / "stack" / "train.py").read_text())
        git = ["git", "-c", "user.email=e2e@example.com", "-c", "user.name=e2e"]
        subprocess.run(["git", "init", "-q"], cwd=self.repo, check=True)
        subprocess.run(git + ["add", "."], cwd=self.repo, check=True)
        subprocess.run(git + ["commit", "-qm", "train churn"], cwd=self.repo, check=True)
        self.commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.repo, check=True, capture_output=True, text=True).stdout.strip()
        # Same data (same digest), different regularisation: two versions of one lineage of data.
        assert self.train("--c", "1.0") == "1"
        assert self.train("--c", "0.1") == "2"
        self.client().set_registered_model_alias("churn", "champion", "2")
        self.client().set_registered_model_alias("churn", "challenger", "1")
        self.start_mlserver()
        self.start_modelstamp()
        self.prometheus = prometheus(procs, f"127.0.0.1:{self.admin_port}")

    def client(self):
        from mlflow import MlflowClient
        return MlflowClient(tracking_uri=self.mlflow)

    def train(self, *args):
        out = subprocess.run([sys.executable, "train.py", *args], cwd=self.repo, capture_output=True, text=True,
                             env={**os.environ, "MLFLOW_TRACKING_URI": self.mlflow, "GIT_PYTHON_REFRESH": "quiet"})
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]

    def start_mlserver(self):
        models = self.procs.tmp / "models"
        for v in ("1", "2"):
            d = models / f"churn-{v}"
            d.mkdir(parents=True)
            (d / "model-settings.json").write_text(json.dumps({
                "name": "churn", "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": f"models:/churn/{v}", "version": v}}))
        self.mlserver_port, self.mlserver_grpc_port = free_port(), free_port()
        env = {"MLFLOW_TRACKING_URI": self.mlflow, "MLSERVER_HTTP_PORT": str(self.mlserver_port),
               "MLSERVER_GRPC_PORT": str(self.mlserver_grpc_port), "MLSERVER_METRICS_ENDPOINT": "", "MLSERVER_PARALLEL_WORKERS": "0",
               "MLSERVER_HOST": "127.0.0.1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        self.procs.start("mlserver", [str(VENV_BIN / "mlserver"), "start", str(models)], env=env)
        for v in ("1", "2"):
            wait_until(lambda: http("GET", f"http://127.0.0.1:{self.mlserver_port}/v2/models/churn/versions/{v}/ready")[0] == 200,
                       timeout=120, what=f"mlserver churn v{v}")

    def start_modelstamp(self):
        self.port, self.admin_port = free_port(), free_port()
        cfg = self.procs.tmp / "modelstamp.toml"
        cfg.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
[admin]
listen = "127.0.0.1:{self.admin_port}"
[access_log]
target = "{self.procs.tmp / 'access.log'}"
[registry]
backend = "mlflow"
uri = "{self.mlflow}"
poll_interval = "1s"
timeout = "2s"
retries = 0
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{self.mlserver_port}"
serves = "@champion"
match = {{ open_inference = true }}
""")
        self.procs.start("modelstamp", [BIN, "run", "--config", str(cfg)])
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_until(lambda: http("GET", f"{self.admin}/readyz")[0] == 200, what="modelstamp ready")

    def triton(self):
        return triton.InferenceServerClient(url=f"127.0.0.1:{self.port}", network_timeout=10.0)

    def infer(self, client, version="", i=0):
        """One Open Inference call made the way a real V2 client makes it (no Content-Type)."""
        inputs = []
        for k, name in enumerate(FEATURES):
            x = triton.InferInput(name, [1, 1], "FP64")
            x.set_data_from_numpy(np.array([[((i * 7 + k) % 10) / 10 - 0.5]], dtype=np.float64), binary_data=False)
            inputs.append(x)
        return client.infer("churn", inputs, model_version=version).get_response()

    def metric(self, series):
        _, _, text = http("GET", f"{self.admin}/metrics")
        for line in text.decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    def versions(self):
        return json.loads(http("GET", f"{self.admin}/versions")[2])


@pytest.fixture(scope="module")
def stack(module_procs):
    return MlflowStack(module_procs)


def test_responses_carry_the_mlflow_version_and_real_lineage(stack):
    client = stack.triton()
    for i in range(10):
        assert stack.infer(client, i=i)["model_version"] == "2"
        assert stack.infer(client, version="1", i=i)["model_version"] == "1"
    status, headers, body = http("POST", f"http://127.0.0.1:{stack.port}/v2/models/churn/versions/1/infer", infer_body(1))
    assert status == 200, body
    assert headers["x-model-version"] == "1"
    lineage = headers["x-lineage-id"]
    record = json.loads(http("GET", f"{stack.admin}/lineage/{lineage}")[2])["record"]
    assert record["code"]["commit"] == stack.commit, "the git commit of the training repo"
    run = stack.client().get_run(record["training_run"])
    digest = run.inputs.dataset_inputs[0].dataset.digest
    assert record["training_data"] == {"name": "churn-train", "source": "file:///data/churn.parquet", "digest": digest,
                                       "context": "training"}
    assert [f["name"] for f in record["input_schema"]] == FEATURES, "the MLmodel signature"
    assert record["params"] == {"C": "1.0"}
    assert record["environment"]["python"].count(".") == 2
    versions = stack.versions()
    assert versions["routes"][0]["version"] == "2" and versions["models"][0]["aliases"] == {"champion": "2", "challenger": "1"}
    lines = [json.loads(l) for l in (stack.procs.tmp / "access.log").read_text().splitlines()]
    assert sum(1 for l in lines if l["version"] == "2" and l["reported_version"] == "2") >= 10


def test_the_version_stamped_is_the_one_uvicorn_serves_for_escaped_and_dotted_paths(stack):
    """MLServer's stack (uvicorn, Starlette) percent-decodes paths: the sidecar must resolve the
    same path, forward what it resolved, and refuse what it cannot make unambiguous."""
    direct = f"http://127.0.0.1:{stack.mlserver_port}"
    proxied = f"http://127.0.0.1:{stack.port}"
    # What the model server itself does with escapes: it decodes them.
    status, _, body = http("POST", f"{direct}/v2/models/churn/versions/%31/infer", infer_body(1))
    assert status == 200 and json.loads(body)["model_version"] == "1", body
    for path, version in [
        ("/v2/models/churn/versions/%31/infer", "1"),
        ("/v2/models/ch%75rn/infer", "2"),
        ("/v2/models/churn/versions/2/../1/infer", "1"),
        ("/v2/models/churn/versions/%32/%2e/infer", "2"),
    ]:
        status, headers, body = http("POST", proxied + path, infer_body(2))
        assert status == 200, (path, body)
        assert headers["x-model-version"] == version, path
        assert json.loads(body)["model_version"] == version, (path, "stamped and served agree")
    status, _, body = http("POST", f"{proxied}/v2/models/churn/versions/1%2Finfer", infer_body(3))
    assert status == 400 and b"path" in body, body


def test_inspection_reads_mlserver_payloads_against_the_mlflow_signature(stack):
    """[inspection] on the real stack: MLServer's responses are counted as predictions and a NULL
    input is checked against the schema modelstamp read from the MLmodel signature."""
    client = stack.triton()
    before = stack.metric('modelstamp_prediction_count{model="churn",version="1"}')
    for i in range(5):
        stack.infer(client, version="1", i=i)
    body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1],
                                   "data": [None if f == "usage_gb" else 0.1]} for f in FEATURES]})
    status, _, _ = http("POST", f"http://127.0.0.1:{stack.port}/v2/models/churn/versions/1/infer", body)
    null = 'modelstamp_feature_issues_total{model="churn",version="1",feature="usage_gb",issue="null"}'
    wait_until(lambda: stack.metric(null) == 1.0, what="the NULL counted against the signature")
    assert stack.metric(null.replace("usage_gb", "tenure")) == 0.0
    assert stack.metric('modelstamp_prediction_count{model="churn",version="1"}') >= before + 5
    print(f"MLServer answered the NULL row with {status}; {null} 1")


def test_promql_slices_by_version_and_joins_lineage(stack):
    base = stack.prometheus
    query = 'sum by (version) (modelstamp_requests_total{model="churn"})'
    result = wait_until(lambda: (lambda r: r if {"1", "2"} <= {x["metric"]["version"] for x in r if float(x["value"][1]) > 0} else None)(
        prom_get(base, "/api/v1/query", query=query)["result"]), what="both versions in Prometheus")
    assert {x["metric"]["version"] for x in result} >= {"1", "2"}
    joined = prom_get(base, "/api/v1/query", query=(
        'sum by (version, lineage_id, git_commit) (modelstamp_requests_total{model="churn"} '
        '* on (model, version) group_left (lineage_id, git_commit) modelstamp_model_version_info)'))["result"]
    commits = {r["metric"]["version"]: r["metric"]["git_commit"] for r in joined}
    assert commits["1"] == commits["2"] == stack.commit


def test_an_alias_move_is_followed_with_zero_failed_requests(stack):
    failures, seen, stop = [], [], threading.Event()

    def drive():
        client = stack.triton()
        i = 0
        while not stop.is_set():
            try:
                stack.infer(client, i=i)
                seen.append(i)
            except Exception as e:  # noqa: BLE001 - every failure is a test failure
                failures.append(repr(e))
            i += 1

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1)
    before = stack.metric('modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}')
    stack.client().set_registered_model_alias("churn", "champion", "1")
    moved = wait_until(lambda: stack.versions()["routes"][0]["version"] == "1", timeout=10, what="the alias move followed")
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert moved and not failures, failures[:5]
    assert len(seen) > 20
    _, headers, _ = http("POST", f"http://127.0.0.1:{stack.port}/v2/models/churn/infer", infer_body(0))
    assert headers["x-model-version"] == "1", "stamps follow the alias"
    # MLServer still answers unversioned calls with its newest version: the sidecar says so.
    assert stack.metric('modelstamp_version_mismatch_total{model="churn",expected="1",reported="2"}') > before


def test_a_new_dataset_digest_flags_the_dependent_versions_stale(stack):
    assert stack.metric('modelstamp_model_version_stale{model="churn",version="1"}') == 0
    # A newer run logs the same dataset (name and source) with different content.
    stack.train("--c", "1.0", "--shift", "0.5", "--register", "")
    wait_until(lambda: stack.metric('modelstamp_model_version_stale{model="churn",version="1"}') == 1, timeout=15,
               what="version 1 flagged stale")
    assert stack.metric('modelstamp_model_version_stale{model="churn",version="2"}') == 1
    _, headers, _ = http("POST", f"http://127.0.0.1:{stack.port}/v2/models/churn/versions/1/infer", infer_body(0))
    assert headers.get("x-lineage-stale") == "true"
    assert "Lineage is stale" in stack.procs.log("modelstamp")


def test_an_authenticated_https_mlflow_is_read_with_the_mlflow_client_settings(stack):
    """`mlflow server --app-name basic-auth` over the same store, served over https (uvicorn's
    TLS, a certificate from the test CA in tests/fixtures/tls) and reached by another spelling of
    its address: a sidecar given MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD and
    MLFLOW_TRACKING_SERVER_CERT_PATH reads the records with the lineage IDs the unauthenticated
    http sidecar stamps; without the CA, without credentials, or with wrong ones, `check` fails
    naming what to set and never prints the password."""
    tmp = stack.procs.tmp
    tls = ROOT / "tests" / "fixtures" / "tls"
    ca = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    port = free_port()
    ini = tmp / "basic_auth.ini"
    ini.write_text(f"""[mlflow]
default_permission = READ
database_uri = sqlite:///{tmp}/basic_auth.db
admin_username = admin
admin_password = e2e-admin-pass-1234
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
""")
    stack.procs.start("mlflow-auth", [str(VENV_BIN / "mlflow"), "server", "--app-name", "basic-auth",
                                      "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                                      "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
                                      "--port", str(port), "--uvicorn-opts",
                                      f"--ssl-keyfile {tls / 'server.key'} --ssl-certfile {tls / 'server.pem'}"],
                      env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                           # The basic-auth app refuses to start without a CSRF key.
                           "MLFLOW_FLASK_SERVER_SECRET_KEY": "e2e-csrf-key"})
    wait_until(lambda: http("GET", f"https://127.0.0.1:{port}/health", context=ca)[0] == 200, timeout=120,
               what="mlflow basic-auth server over https")
    # The real server refuses an anonymous API call: what the sidecar has to meet.
    assert http("GET", f"https://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name=churn",
                context=ca)[0] == 401
    sidecar_port, admin_port = free_port(), free_port()
    cfg = tmp / "modelstamp-auth.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{sidecar_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[access_log]
target = "off"
[registry]
backend = "mlflow"
uri = "https://localhost:{port}"
poll_interval = "1s"
timeout = "5s"
retries = 0
fail_fast = true
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{stack.mlserver_port}"
serves = "@champion"
match = {{ open_inference = true }}
""")
    creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "e2e-admin-pass-1234"}
    # MLflow's certificate is not trusted without the CA: the error says so and what to set.
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True,
                         env={**os.environ, **creds})
    assert out.returncode != 0 and "invalid peer certificate" in out.stderr, out.stderr
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in out.stderr, out.stderr
    creds["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(tls / "ca.pem")
    trusted = {"MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls / "ca.pem")}
    for env, expected in [(trusted, "MLflow asks for credentials and none are set"),
                          ({**creds, "MLFLOW_TRACKING_PASSWORD": "wrong-pass-5678"}, "MLflow refused the credentials")]:
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True,
                             env={**os.environ, **env})
        assert out.returncode != 0 and "HTTP 401" in out.stderr and expected in out.stderr, out.stderr
        assert "MLFLOW_TRACKING_USERNAME" in out.stderr and "wrong-pass" not in out.stdout + out.stderr
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True,
                         env={**os.environ, **creds})
    assert out.returncode == 0 and "1 models, 2 versions" in out.stdout, out.stdout + out.stderr
    stack.procs.start("modelstamp-auth", [BIN, "run", "--config", str(cfg)], env=creds)
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: http("GET", f"{admin}/readyz")[0] == 200, what="modelstamp on the basic-auth MLflow")

    def ids(admin_url):
        models = json.loads(http("GET", f"{admin_url}/versions")[2])["models"]
        return {v["version"]: v["lineage_id"] for m in models for v in m["versions"]}

    wait_until(lambda: ids(admin) == ids(stack.admin), timeout=10, what="the same lineage IDs through both addresses")
    assert all(i.startswith("ln_") for i in ids(admin).values()) and len(ids(admin)) == 2
    record = json.loads(http("GET", f"{admin}/lineage/{ids(admin)['1']}")[2])["record"]
    assert record["code"]["commit"] == stack.commit, "a lineage record read from the authenticated HTTPS MLflow"
    assert record["training_run_url"].startswith(f"https://localhost:{port}/")
    # Shown with `pytest -s`: the record as an incident responder reads it.
    print("lineage record read from the authenticated https MLflow:", json.dumps(record, indent=1))
    stack.procs.stop("modelstamp-auth")
    stack.procs.stop("mlflow-auth")


def test_tritonclient_grpc_through_the_sidecar_to_mlserver(stack):
    """[grpc] tritonclient.grpc → modelstamp → MLServer's gRPC port, on a route splitting 50/50
    between versions 1 and 2 of the MLflow model: an explicit model_version is resolved, stamped
    and served; a version MLServer does not have answers NOT_FOUND, which counts as the client's
    4xx (not a 2xx, not the version's error); calls without a version are split, and each is served
    by the version stamped on it (the version MLServer reports in the ModelInferResponse). Calls
    the client gzip-compresses resolve the same; per version, the inspector counts exactly the rows,
    predictions and missing features sent over gRPC."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    port, admin_port = free_port(), free_port()
    log = stack.procs.tmp / "grpc-access.log"
    cfg = stack.procs.tmp / "modelstamp-grpc.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[access_log]
target = "{log}"
[registry]
backend = "mlflow"
uri = "{stack.mlflow}"
poll_interval = "1s"
timeout = "2s"
retries = 0
[[routes]]
name = "churn-grpc"
model = "churn"
upstream = "127.0.0.1:{stack.mlserver_grpc_port}"
match = {{ open_inference = true }}
[[routes.backends]]
version = "1"
weight = 50
[[routes.backends]]
version = "2"
weight = 50
""")
    stack.procs.start("modelstamp-grpc", [BIN, "run", "--config", str(cfg)])
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: http("GET", f"{admin}/readyz")[0] == 200, what="modelstamp on MLServer's gRPC port")
    client = tgrpc.InferenceServerClient(url=f"127.0.0.1:{port}")

    def infer(version="", i=0):
        inputs = []
        for k, name in enumerate(FEATURES):
            x = tgrpc.InferInput(name, [1, 1], "FP64")
            x.set_data_from_numpy(np.array([[((i * 7 + k) % 10) / 10 - 0.5]], dtype=np.float64))
            inputs.append(x)
        return client.infer("churn", inputs, model_version=version).get_response()

    for v in ("1", "2"):
        assert infer(v).model_version == v
    with pytest.raises(InferenceServerException) as refused:
        infer("7")
    assert "NOT_FOUND" in str(refused.value.status()), refused.value
    served = [infer("", i).model_version for i in range(20)]
    assert set(served) == {"1", "2"}, served

    def lines():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    wait_until(lambda: len(lines()) == 23, what="23 access-log lines")
    got = lines()
    assert [(line["version"], line["reported_version"], line["grpc_status"]) for line in got[:2]] == \
        [("1", "1", 0), ("2", "2", 0)], got[:2]
    assert got[2]["grpc_status"] == 5 and got[2]["status"] == 200 and got[2]["error"] is None, got[2]
    split = got[3:]
    assert all(line["version"] == line["reported_version"] for line in split), split
    assert [line["reported_version"] for line in split] == served
    assert all(line["lineage_id"].startswith("ln_") and line["grpc_status"] == 0 for line in split), split

    def metric(series):
        for line in http("GET", f"{admin}/metrics")[2].decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    ok = sum(metric(f'modelstamp_requests_total{{model="churn",version="{v}",status_class="2xx"}}') for v in ("1", "2"))
    assert ok == 22
    assert metric('modelstamp_requests_total{model="churn",version="unknown",status_class="4xx"}') == 1
    assert metric('modelstamp_requests_total{model="churn",version="unknown",status_class="2xx"}') == 0
    assert "modelstamp_version_mismatch_total{" not in http("GET", f"{admin}/metrics")[2].decode()

    # Calls compressed by the client (grpc-encoding gzip) resolve, stamp and inspect as plain ones.
    for i in range(3):
        inputs = []
        for k, name in enumerate(FEATURES):
            x = tgrpc.InferInput(name, [1, 1], "FP64")
            x.set_data_from_numpy(np.array([[0.1 * k]], dtype=np.float64))
            inputs.append(x)
        answer = client.infer("churn", inputs, model_version="1", compression_algorithm="gzip")
        assert answer.get_response().model_version == "1"
    # Rows without `usage_gb`: MLServer refuses them; the inspector counts the missing feature.
    for i in range(3):
        inputs = []
        for name in FEATURES[:-1]:
            x = tgrpc.InferInput(name, [1, 1], "FP64")
            x.set_data_from_numpy(np.array([[0.2]], dtype=np.float64))
            inputs.append(x)
        with pytest.raises(InferenceServerException):
            client.infer("churn", inputs, model_version="2")
    wait_until(lambda: len(lines()) == 29, what="29 access-log lines")
    assert [(line["version"], line["reported_version"]) for line in lines()[23:26]] == [("1", "1")] * 3
    # Per version, the inspector counted exactly the rows and predictions sent over gRPC.
    rows = {"1": 1 + served.count("1") + 3, "2": 1 + served.count("2") + 3}
    predicted = {"1": 1 + served.count("1") + 3, "2": 1 + served.count("2")}
    for v in ("1", "2"):
        wait_until(lambda: metric(f'modelstamp_inspected_rows_total{{model="churn",version="{v}"}}') == rows[v],
                   what=f"version {v}'s {rows[v]} gRPC rows inspected")
        assert metric(f'modelstamp_prediction_count{{model="churn",version="{v}"}}') == predicted[v], v
    missing = 'modelstamp_feature_issues_total{model="churn",version="2",feature="usage_gb",issue="missing"}'
    assert metric(missing) == 3
    assert metric(missing.replace('version="2"', 'version="1"')) == 0
    assert metric('modelstamp_inspect_skipped_total{reason="unparseable"}') == 0
    print("gRPC inspection per version:", {v: (rows[v], predicted[v]) for v in rows}, missing, 3)
    # Shown with `pytest -s`: the gRPC canary's per-version series, as Prometheus scrapes them.
    shown = ("modelstamp_requests_total{", "modelstamp_inspected_rows_total{", "modelstamp_prediction_count{",
             "modelstamp_feature_issues_total{", "modelstamp_upstream_errors_total{")
    for line in http("GET", f"{admin}/metrics")[2].decode().splitlines():
        if line.startswith(shown) and 'model="churn"' in line and not line.endswith(" 0"):
            print(line)
    stack.procs.stop("modelstamp-grpc")


def test_an_mlflow_outage_keeps_traffic_flowing(stack):
    assert stack.metric("modelstamp_registry_up") == 1
    stack.procs.stop("mlflow")
    wait_until(lambda: stack.metric("modelstamp_registry_up") == 0, timeout=15, what="registry_up 0")
    client = stack.triton()
    for i in range(20):
        assert stack.infer(client, version="2", i=i)["model_version"] == "2"
    _, headers, _ = http("POST", f"http://127.0.0.1:{stack.port}/v2/models/churn/infer", infer_body(0))
    assert headers["x-model-version"] == "1" and headers["x-lineage-id"].startswith("ln_"), "last known good records"
    assert stack.metric("modelstamp_registry_staleness_seconds") > 0
