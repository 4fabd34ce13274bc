"""[grpc] tritonclient.http's binary tensors (Triton's binary tensor extension, its default)
through the real binary, to a Triton-like model server run in this process (MLServer does not
accept binary tensors): versions are stamped and read from the answer's JSON head, and the
inspector counts per version exactly the rows, predictions and data-quality issues sent."""

import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tritonclient.http as triton

from conftest import BIN, ROOT, free_port, http, wait_until

FEATURES = ["tenure", "monthly_charges", "support_calls", "usage_gb"]
DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}


def decode(datatype, raw):
    if datatype == "BYTES":
        out, at = [], 0
        while at < len(raw):
            (n,) = struct.unpack_from("<I", raw, at)
            out.append(raw[at + 4:at + 4 + n])
            at += 4 + n
        return out
    return np.frombuffer(raw, dtype=DTYPES[datatype]).tolist()


class TritonLike(BaseHTTPRequestHandler):
    """Answers `/v2/models/{m}[/versions/{v}]/infer` in the binary extension: the prediction is
    each row's mean feature, as a binary FP64 output when asked for (JSON otherwise)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        m = re.fullmatch(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer", self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head_len = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        head = json.loads(body[:head_len])
        at, columns = head_len, []
        for t in head["inputs"]:
            size = t.get("parameters", {}).get("binary_data_size")
            if size is None:
                columns.append(np.ravel(t["data"]).tolist())
            else:
                columns.append(decode(t["datatype"], body[at:at + size]))
                at += size
        rows = np.array(columns, dtype=np.float64).T
        predictions = rows.mean(axis=1)
        binary = any(o.get("parameters", {}).get("binary_data") for o in head.get("outputs", []))
        output = {"name": "churn_probability", "datatype": "FP64", "shape": [len(predictions), 1]}
        if binary:
            output["parameters"] = {"binary_data_size": 8 * len(predictions)}
        else:
            output["data"] = predictions.tolist()
        answer = json.dumps({"model_name": m.group(1), "model_version": m.group(2) or "1",
                             "outputs": [output]}).encode()
        headers = {"Content-Type": "application/json"}
        if binary:
            headers = {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": str(len(answer))}
            answer += predictions.astype("<f8").tobytes()
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def test_tritonclient_http_binary_tensors_are_stamped_and_inspected(procs):
    server = ThreadingHTTPServer(("127.0.0.1", 0), TritonLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port, admin_port = free_port(), free_port()
        log = procs.tmp / "access.log"
        cfg = procs.tmp / "modelstamp.toml"
        cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[access_log]
target = "{log}"
[registry]
path = "{ROOT / 'config' / 'registry.yaml'}"
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{server.server_address[1]}"
serves = "@champion"
match = {{ open_inference = true }}
""")
        procs.start("modelstamp", [BIN, "run", "--config", str(cfg)])
        admin = f"http://127.0.0.1:{admin_port}"
        wait_until(lambda: http("GET", f"{admin}/readyz")[0] == 200, what="modelstamp ready")
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")

        def infer(rows, version="", binary_output=True):
            inputs = []
            for k, name in enumerate(FEATURES):
                x = triton.InferInput(name, [len(rows), 1], "FP64")
                x.set_data_from_numpy(np.array([[r[k]] for r in rows], dtype=np.float64))  # binary
                inputs.append(x)
            outputs = [triton.InferRequestedOutput("churn_probability", binary_data=binary_output)]
            result = client.infer("churn", inputs, model_version=version, outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("churn_probability")[:, 0], np.mean(rows, axis=1))
            return result.get_response()["model_version"]

        # The champion (1): 10 calls of 2 clean rows, one answered in JSON.
        for i in range(10):
            assert infer([[0.1 * i, 0.2, -0.3, 0.4], [1.0, -1.0, 0.5, 0.0]], binary_output=i != 0) == "1"
        # Version 2, named in the path: 5 calls whose second row's usage_gb is out of range.
        for i in range(5):
            assert infer([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 9.0]], version="2") == "2"

        def metric(series):
            for line in http("GET", f"{admin}/metrics")[2].decode().splitlines():
                if line.startswith(series + " "):
                    return float(line.split()[-1])
            return 0.0

        rows = 'modelstamp_inspected_rows_total{model="churn",version="%s"}'
        wait_until(lambda: metric(rows % "1") == 20 and metric(rows % "2") == 10,
                   what="every binary row inspected")
        assert metric('modelstamp_prediction_count{model="churn",version="1"}') == 20
        assert metric('modelstamp_prediction_count{model="churn",version="2"}') == 10
        out_of_range = 'modelstamp_feature_issues_total{model="churn",version="%s",feature="usage_gb",issue="out_of_range"}'
        assert metric(out_of_range % "2") == 5
        assert metric(out_of_range % "1") == 0
        assert metric('modelstamp_inspect_skipped_total{reason="unparseable"}') == 0
        def lines():
            got = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            return got if len(got) == 15 else None

        lines = wait_until(lines, what="15 access-log lines")
        assert [(line["version"], line["reported_version"]) for line in lines] == \
            [("1", "1")] * 10 + [("2", "2")] * 5
        assert "modelstamp_version_mismatch_total{" not in http("GET", f"{admin}/metrics")[2].decode()
        print("binary tensors inspected per version:", {"1": 20, "2": 10}, out_of_range % "2", 5)
    finally:
        server.shutdown()
        server.server_close()
