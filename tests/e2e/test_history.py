"""[history] A fleet's sidecars share one PostgreSQL (Debian's, started here in a temp dir as the
`postgres` user): an incident seen by one of three sidecars is explained by the other two, over
`--from/--to`, after the first is killed; PostgreSQL stopped under load loses no proxied request, and the events of the outage
reach it after."""

import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, ROOT, free_port, http, wait_until

TOKEN = "history-e2e-token-0123456"
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1] if glob.glob("/usr/lib/postgresql/*/bin/initdb") else None


class Postgres:
    """A throwaway cluster: initdb as `postgres` into a directory it owns, on its own port."""

    def __init__(self, procs):
        self.procs = procs
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="modelstamp-pg-")
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.as_postgres([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256"])
        self.start()
        self.psql("CREATE USER ms PASSWORD 'fleet-secret'; GRANT CREATE ON DATABASE postgres TO ms;")

    def as_postgres(self, args):
        out = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def start(self):
        self.procs.start("postgres", ["runuser", "-u", "postgres", "--", f"{PG_BIN}/postgres", "-D", self.data,
                                      "-p", str(self.port), "-k", self.dir, "-c", "listen_addresses=127.0.0.1"])
        wait_until(lambda: subprocess.run([f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                                          capture_output=True).returncode == 0, what="postgres ready")

    def stop(self):
        # A fast shutdown: SIGTERM's smart one would wait for the sidecars' connections to end.
        self.as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        self.procs.stop("postgres")

    def psql(self, sql):
        return self.as_postgres([f"{PG_BIN}/psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                                 "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg(procs):
    if PG_BIN is None:
        pytest.fail("PostgreSQL is not installed (tests/e2e/run.sh installs it)")
    p = Postgres(procs)
    yield p
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", p.data, "-m", "immediate", "stop"],
                   capture_output=True)
    procs.stop("postgres")
    p.cleanup()


def sidecar(procs, pg, name, model_port):
    port, admin = free_port(), free_port()
    secret = procs.tmp / "pg-password"
    secret.write_text("fleet-secret\n")
    cfg = procs.tmp / f"{name}.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
target = "off"
[registry]
path = "{ROOT / 'config' / 'registry.yaml'}"
[history]
url = "postgres://ms@127.0.0.1:{pg.port}/postgres"
password_file = "{secret}"
instance = "{name}"
[[routes]]
name = "churn"
model = "churn"
upstream = "127.0.0.1:{model_port}"
match = {{ open_inference = true }}
[[routes.backends]]
version = "1"
weight = 50
[[routes.backends]]
version = "2"
weight = 50
[routes.canary]
sticky_header = "x-user-id"
min_requests = 50
""")
    procs.start(name, [BIN, "run", "--config", str(cfg)], env={"MODELSTAMP_ADMIN_TOKEN": TOKEN})
    admin_url = f"http://127.0.0.1:{admin}"
    wait_until(lambda: http("GET", f"{admin_url}/readyz")[0] == 200, what=f"{name} ready")
    return f"http://127.0.0.1:{port}", admin_url


def infer(url, user, support_calls):
    row = {"tenure": 0.1, "monthly_charges": -0.2, "support_calls": support_calls, "usage_gb": 0.3}
    body = json.dumps({"inputs": [{"name": f, "datatype": "FP64", "shape": [1, 1], "data": [v]} for f, v in row.items()]})
    return http("POST", f"{url}/v2/models/churn/infer", body, {"x-user-id": user})[0]


def metric(admin, name):
    _, _, body = http("GET", f"{admin}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def written(admin):
    return metric(admin, 'modelstamp_history_writes_total{result="success"}') > 0 \
        and metric(admin, "modelstamp_history_queue_depth") == 0


def explain(admin, *window):
    window = window or ("--since", "10m")
    out = subprocess.run([BIN, "explain", "--model", "churn", *window, "--json", "--admin", admin],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_fleet_explains_an_incident_after_the_sidecar_that_saw_it_is_gone(procs, pg):
    model_port = free_port()
    procs.start("model", [BIN, "demo-model", "--listen", f"127.0.0.1:{model_port}"])
    a_url, a_admin = sidecar(procs, pg, "sidecar-a", model_port)
    _, b_admin = sidecar(procs, pg, "sidecar-b", model_port)
    _, c_admin = sidecar(procs, pg, "sidecar-c", model_port)
    began = time.time()
    # Version 2 fails on high support-call counts: every such request it takes errs, on A only.
    statuses = [infer(a_url, f"u{i}", 2.5) for i in range(300)]
    assert 500 in statuses and 200 in statuses
    onsets = "SELECT instance || ' ' || kind || ' ' || coalesce(version, '-') FROM modelstamp.events WHERE kind = 'onset'"
    wait_until(lambda: "sidecar-a onset 2" in pg.psql(onsets), what="A's onset in PostgreSQL")
    procs.stop("sidecar-a")
    # B and C never saw a request; their windows are empty; the shared store holds A's journal.
    ended = time.time() + 1
    window = ("--from", str(int((began - 5) * 1000)), "--to", str(int(ended * 1000)))
    for admin in (b_admin, c_admin):
        e = explain(admin, *window)
        assert "postgres://ms@127.0.0.1" in e["events_source"], e["events_source"]
        top = e["causes"][0]
        assert (top["rule"], top["version"]) == ("past_errors", "2"), e["causes"]
        assert "against version 1 it was trained with dataset digest e5d3 → 9a41" in top["title"], top["title"]
        assert any(t["kind"] == "onset" and t["version"] == "2" for t in e["timeline"]), e["timeline"]
    # A window that ends before the incident holds none of it.
    before = explain(b_admin, "--from", str(int((began - 600) * 1000)), "--to", str(int((began - 60) * 1000)))
    assert before["causes"] == [], before["causes"]


def test_postgres_stopped_under_load_loses_no_request_and_its_events_arrive_after(procs, pg):
    model_port = free_port()
    procs.start("model", [BIN, "demo-model", "--listen", f"127.0.0.1:{model_port}"])
    url, admin = sidecar(procs, pg, "sidecar-b", model_port)
    assert all(infer(url, f"w{i}", 0.1) == 200 for i in range(20))
    pg.stop()
    # 30 s without PostgreSQL: requests keep flowing, a weight change is journaled.
    deadline, sent, ok = time.monotonic() + 30, 0, 0
    changed = False
    while time.monotonic() < deadline:
        sent += 1
        ok += infer(url, f"o{sent}", 0.1) == 200
        if not changed and sent > 50:
            status, _, body = http("POST", f"{admin}/routes/churn/weights",
                                   json.dumps({"weights": {"1": 70, "2": 30}, "actor": "dana", "reason": "during the outage"}),
                                   {"authorization": f"Bearer {TOKEN}"})
            assert status == 200, body
            changed = True
        time.sleep(0.01)
    assert sent == ok and sent > 200, (sent, ok)
    assert metric(admin, 'modelstamp_history_writes_total{result="failure"}') > 0
    pg.start()
    changes = "SELECT summary FROM modelstamp.events WHERE kind = 'weights_changed' AND instance = 'sidecar-b'"
    wait_until(lambda: "weight 50 -> 30" in pg.psql(changes), timeout=60, what="the spool flushed")
    rows = pg.psql(changes)
    assert "weight 50 -> 70" in rows and "weight 50 -> 30" in rows, rows
    wait_until(lambda: pg.psql("SELECT count(*) FROM modelstamp.audit").strip() == "1", what="the audit entry")
    wait_until(lambda: written(admin), what="nothing left waiting")
    assert metric(admin, "modelstamp_history_dropped_total") == 0

    # The audit entry of that change is in PostgreSQL too, chained per model: searchable,
    # verifiable, and an UPDATE in psql is found.
    cfg = str(procs.tmp / "sidecar-b.toml")

    def cli(*args):
        return subprocess.run([BIN, "audit", *args, "--config", cfg], capture_output=True, text=True)

    good = cli("verify")
    assert good.returncode == 0 and "churn: 1 entries, chain intact" in good.stdout, good.stdout + good.stderr
    found = cli("search", "--model", "churn", "--actor", "dana", "--since", "1d")
    assert found.returncode == 0 and "by dana on sidecar-b: during the outage" in found.stdout, found.stdout + found.stderr
    assert cli("search", "--actor", "mallory").stdout == ""
    exported = cli("export", "--model", "churn")
    assert exported.stdout.count("\n") == 1 and '"actor":"dana"' in exported.stdout, exported.stdout
    pg.psql("UPDATE modelstamp.audit SET line = replace(line, 'during the outage', 'routine') WHERE model = 'churn'")
    bad = cli("verify")
    assert bad.returncode == 1 and "model churn" in bad.stderr and "edited" in bad.stderr, bad.stdout + bad.stderr
    print(found.stdout, bad.stderr)
