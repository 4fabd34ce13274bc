"""[traces] on real components: spans through the rotel OTLP collector, exemplars stored and
queried in a real Prometheus, and both exposition formats checked by real parsers."""

import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

from conftest import ROOT, ROTEL, Stack, free_port, http, wait_until

TLS = ROOT / "tests" / "fixtures" / "tls"


def start_rotel(procs):
    grpc, http_port = free_port(), free_port()
    procs.start("rotel", [ROTEL, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
                          "--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "blackhole",
                          "--debug-log", "traces", "--debug-log-verbosity", "detailed",
                          "--pid-file", str(procs.tmp / "rotel.pid")])
    wait_until(lambda: "Starting Rotel" in procs.log("rotel"), what="rotel started")
    return grpc


def test_spans_reach_a_real_otlp_collector(procs):
    grpc = start_rotel(procs)
    stack = Stack(procs, otlp_endpoint=f"http://127.0.0.1:{grpc}")
    trace_ids = [f"{0xe2e0000 + i:032x}" for i in range(5)]
    for i, t in enumerate(trace_ids):
        status, headers, _ = stack.infer(version="2", trace_id=t, i=i)
        assert status == 200
        lineage = headers["x-lineage-id"]
    log = wait_until(lambda: (lambda text: text if all(t in text for t in trace_ids) else None)(procs.log("rotel")),
                     what="all traces at the collector")
    assert "service.name: Str(modelstamp-e2e)" in log
    assert f"ml.lineage.id: Str({lineage})" in log
    assert "ml.model.version: Str(2)" in log
    assert "Kind           : SPAN_KIND_SERVER" in log and "Kind           : SPAN_KIND_CLIENT" in log
    print(log[log.index("Span #"):][:1800])


class TlsTerminator:
    """TLS in front of a plaintext port, as a load balancer or nginx terminates it for a
    collector: Python's ssl (OpenSSL, not the sidecar's rustls) with the test CA's certificate for
    localhost and ALPN h2 / http/1.1, bytes relayed both ways. rotel's receivers have no TLS."""

    def __init__(self, backend):
        self.backend = backend
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(TLS / "server.pem", TLS / "server.key")
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.alpn = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        self.alpn.append(tls.selected_alpn_protocol())
        plain = socket.create_connection(("127.0.0.1", self.backend))

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(plain, tls), daemon=True).start()
        pump(tls, plain)

    def close(self):
        self.sock.close()


def test_spans_reach_a_real_collector_over_tls(procs):
    """OTLP/gRPC over TLS: the sidecar's exporter checks the terminator's certificate against
    OTEL_EXPORTER_OTLP_CERTIFICATE, negotiates h2 by ALPN, and rotel decodes the spans."""
    grpc = start_rotel(procs)
    front = TlsTerminator(grpc)
    try:
        stack = Stack(procs, otlp_endpoint=f"https://localhost:{front.port}",
                      env={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(TLS / "ca.pem")})
        trace_ids = [f"{0x7150000 + i:032x}" for i in range(3)]
        for i, t in enumerate(trace_ids):
            status, headers, _ = stack.infer(version="2", trace_id=t, i=i)
            assert status == 200
        log = wait_until(lambda: (lambda text: text if all(t in text for t in trace_ids) else None)(procs.log("rotel")),
                         what="all traces at the collector through TLS")
        assert f"ml.lineage.id: Str({headers['x-lineage-id']})" in log
        assert front.alpn and set(front.alpn) == {"h2"}, front.alpn
    finally:
        front.close()


def prometheus(procs, target):
    port = free_port()
    cfg = procs.tmp / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: modelstamp
    static_configs:
      - targets: ["{target}"]
""")
    procs.start("prometheus", ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={procs.tmp / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"])
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", f"{base}/-/ready")[0] == 200, what="prometheus ready")
    return base


def prom_get(base, path, **params):
    status, _, body = http("GET", f"{base}{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    return json.loads(body)["data"]


def test_exemplars_lead_from_a_version_to_its_traces(procs):
    stack = Stack(procs)
    base = prometheus(procs, f"127.0.0.1:{stack.admin_port}")
    wait_until(lambda: prom_get(base, "/api/v1/query", query='up{job="modelstamp"}')["result"][0]["value"][1] == "1",
               what="first scrape")
    start = time.time() - 5
    v2 = {f"{0xbeef0000 + i:032x}" for i in range(20)}
    v1 = {f"{0xcafe0000 + i:032x}" for i in range(20)}
    for i, (a, b) in enumerate(zip(sorted(v2), sorted(v1))):
        assert stack.infer(version="2", trace_id=a, i=i)[0] == 200
        assert stack.infer(trace_id=b, i=i)[0] == 200

    def exemplars(version):
        data = prom_get(base, "/api/v1/query_exemplars", start=start, end=time.time() + 5,
                        query=f'modelstamp_request_duration_seconds_bucket{{version="{version}"}}')
        return {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}

    got2 = wait_until(lambda: exemplars("2"), what="exemplars for version 2")
    got1 = wait_until(lambda: exemplars("1"), what="exemplars for version 1")
    assert got2 <= v2, f"version 2 exemplars point only at version-2 traces: {got2 - v2}"
    assert got1 <= v1, f"version 1 exemplars point only at version-1 traces: {got1 - v1}"
    print("query_exemplars version=2:", json.dumps(prom_get(base, "/api/v1/query_exemplars", start=start,
          end=time.time() + 5, query='modelstamp_request_duration_seconds_bucket{version="2"}'))[:1500])
    # model_version_info joins any series to its lineage.
    joined = prom_get(base, "/api/v1/query", query='sum by (model, version, lineage_id) '
                      '(modelstamp_requests_total * on (model, version) group_left (lineage_id) modelstamp_model_version_info)')
    by_version = {r["metric"]["version"]: r["metric"]["lineage_id"] for r in joined["result"]}
    assert by_version["1"].startswith("ln_") and by_version["2"].startswith("ln_") and by_version["1"] != by_version["2"]


def test_exposition_passes_promtool_and_a_strict_openmetrics_parser(procs):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    stack = Stack(procs)
    for i in range(5):
        stack.infer(trace_id=f"{0xab0000 + i:032x}", i=i)
    _, _, classic = http("GET", f"{stack.admin}/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=classic, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    _, headers, om = http("GET", f"{stack.admin}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    families = list(text_string_to_metric_families(om.decode()))
    exemplars = [s.exemplar for f in families for s in f.samples if s.exemplar]
    assert exemplars and all(len(e.labels["trace_id"]) == 32 and len(e.labels["span_id"]) == 16 for e in exemplars)
