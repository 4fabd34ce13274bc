"""[connect] TLS on the data plane, reached by a real client: curl (OpenSSL, nghttp2) over
HTTP/2 negotiated by ALPN and over HTTP/1.1, checking the sidecar's certificate against the test
CA; the stamps and the model's answer arrive as over plaintext, and the admin API, given
client-certificate auth, answers only a client that presents one, the CLI's healthcheck included."""

import json
import os
import subprocess

from conftest import BIN, ROOT, Stack, infer_body

TLS = ROOT / "tests" / "fixtures" / "tls"


def curl(*args):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(TLS / "ca.pem"), *args],
                         capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


def test_curl_reaches_the_sidecar_over_tls_with_h2_and_http1(procs):
    stack = Stack(procs, extra=f"""
[server.tls]
cert_file = "{TLS / 'server.pem'}"
key_file = "{TLS / 'server.key'}"
[admin.tls]
cert_file = "{TLS / 'server.pem'}"
key_file = "{TLS / 'server.key'}"
client_ca_file = "{TLS / 'ca.pem'}"
""", ready=False)
    admin = f"https://localhost:{stack.admin_port}"
    client = ["--cert", str(TLS / "client.pem"), "--key", str(TLS / "client.key")]
    stack.wait_ready(lambda: curl(*client, f"{admin}/readyz")[0] == 0)
    url = f"https://localhost:{stack.port}/v2/models/churn/infer"
    for flag, version in [("--http2", "2"), ("--http1.1", "1.1")]:
        code, out, err = curl(flag, "-D", "-", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                              "-H", "content-type: application/json", "--data", infer_body(1), url)
        assert code == 0, err
        head, _, summary = out.rpartition("\n")
        assert summary == f"{version} 200", out
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.splitlines()[1:] if ":" in line)}
        assert headers["x-model-name"] == "churn" and headers["x-lineage-id"].startswith("ln_"), headers
    # Plaintext is not served on the TLS port.
    code, _, _ = curl(f"http://localhost:{stack.port}/v2/models/churn/infer", "--data", infer_body(1))
    assert code != 0
    # The admin API answers only a client with a certificate from its CA.
    code, _, err = curl(f"{admin}/healthz")
    assert code != 0, "answered without a client certificate"
    code, out, err = curl(*client, f"{admin}/versions")
    assert code == 0 and json.loads(out)["models"], err
    # The container healthcheck, as the image runs it: the CLI reads the same config, speaks https
    # to the admin listener, trusts the certificate it serves and presents the client one.
    cfg = stack.procs.tmp / "modelstamp.toml"
    env = dict(os.environ, MODELSTAMP_ADMIN_CERT_FILE=str(TLS / "client.pem"),
               MODELSTAMP_ADMIN_KEY_FILE=str(TLS / "client.key"))
    check = subprocess.run([BIN, "healthcheck", "--config", str(cfg)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    env.pop("MODELSTAMP_ADMIN_CERT_FILE")
    check = subprocess.run([BIN, "healthcheck", "--config", str(cfg)], env=env, capture_output=True, text=True)
    assert check.returncode == 1, "healthy without the client certificate the admin API requires"
