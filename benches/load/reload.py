#!/usr/bin/env python3
"""Proxied latency while the registry is rewritten: does a reload hold up requests?

A 1,000-version registry with realistic records (input schema of 40 features with reference
distributions, lineage, metrics; several MB of YAML) is served by a file registry with
`reload.poll_interval = "1s"`, in two layouts: `file` (one YAML file) and `dir` (a directory of
one file per version plus one for the aliases, laid out as a ConfigMap volume: the kubelet's
hidden generation directories and `..data` link). Open-loop traffic at a fixed rate
(benches/load/loadgen.rs) goes through the sidecar to the fast stub (`modelstamp demo-model
--fixed`) in two phases, each measured separately: `static` (nothing changes) and `rewritten`
(every second a new registry, one changed promotion reason, replaces the old one: the file is
rewritten, or `..data` swapped to a generation in which every file is new, so every poll reads,
validates and swaps a new snapshot). Targets and phases are interleaved over repetitions; the
medians of p50, p99 and p99.9 are reported, with how many reloads each `rewritten` phase saw.

`--binary` is the sidecar to measure (default target/release/modelstamp); `--baseline` another
build to measure in the same run (e.g. one built from an older commit by reload.sh).

Usage: reload.py [--reps 3] [--seconds 20] [--rate 1000] [--versions 1000]
                 [--layouts file,dir] [--binary PATH] [--baseline PATH] [--smoke]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import BODY, PATH, ROOT, MODELSTAMP_ENV, Procs, free_port, wait_port  # noqa: E402

FEATURES = 40


def version_record(v, reason):
    """One version's record (YAML flow style), about 4 KB."""
    edges = ", ".join(f"{0.1 * k:.1f}" for k in range(1, 10))
    fractions = ", ".join(["0.1"] * 10)
    schema = ", ".join(
        f"{{ name: f{j}, type: double, min: 0.0, max: 1.0, source: warehouse.t{j % 7}.c{j},"
        f" reference: {{ edges: [{edges}], fractions: [{fractions}] }} }}"
        for j in range(FEATURES))
    return (f"      \"{v}\": {{ code: {{ repo: https://git.example.com/ml/churn, commit: {v:040x} }},"
            f" training_data: {{ name: churn-train, digest: d{v:07x}, source: s3://ml/churn/{v}.parquet,"
            f" upstream_tables: [crm.accounts, billing.invoices] }},"
            f" environment: {{ python: 3.11.7, runtime: mlserver 1.7.1, lock_digest: sha256:{v:010x} }},"
            f" promotion: {{ by: alice, at: '2026-11-20T08:30:00Z', reason: '{reason}' }},"
            f" metrics: {{ accuracy: 0.91, auc: 0.87 }}, input_schema: [{schema}] }}")


def registry_text(versions, generation):
    lines = ["models:", "  churn:", "    aliases: { champion: \"1\" }", "    versions:"]
    for v in range(1, versions + 1):
        lines.append(version_record(v, f"generation {generation}" if v == 1 else "initial"))
    return ("\n".join(lines) + "\n").encode()


def registry_files(versions, generation):
    """The same registry split as a ConfigMap must split it: one file per version, one for
    the aliases (the `dir` layout)."""
    files = {"aliases.yaml": b"models:\n  churn:\n    aliases: { champion: \"1\" }\n"}
    for v in range(1, versions + 1):
        record = version_record(v, f"generation {generation}" if v == 1 else "initial")
        files[f"churn-{v}.yaml"] = f"models:\n  churn:\n    versions:\n{record}\n".encode()
    return files


def write_generations(registry, generations):
    """A ConfigMap volume as the kubelet writes it: each generation's files in a hidden
    directory, `..data` linking to the current one and every visible name linking through
    `..data`. The first generation is current."""
    registry.mkdir()
    for g, files in enumerate(generations):
        (registry / f"..gen{g}").mkdir()
        for name, text in files.items():
            (registry / f"..gen{g}" / name).write_bytes(text)
    for name in generations[0]:
        (registry / name).symlink_to(Path("..data") / name)
    swap_generation(registry, 0)


def swap_generation(registry, g):
    tmp = registry / "..data_tmp"
    tmp.symlink_to(f"..gen{g}")
    os.replace(tmp, registry / "..data")  # atomic, as the kubelet's update is


def write_registry(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)  # atomic, as a ConfigMap update is


def config(tmp, port, admin, upstream, registry):
    cfg = tmp / f"reload-{port}.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
target = "off"
[registry]
path = "{registry}"
[reload]
poll_interval = "1s"
[[routes]]
name = "churn"
upstream = "127.0.0.1:{upstream}"
serves = "@champion"
match = {{ open_inference = true }}
""")
    return cfg


def reloads(admin):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    m = re.search(r'^modelstamp_config_reloads_total\{result="success"\} (\S+)', text, re.M)
    return float(m.group(1)) if m else 0.0


def run_phase(procs, binary, layout, tmp, loadgen, upstream, body_file, a, rewrite):
    registry = tmp / f"registry-{binary.name}-{layout}-{rewrite}"
    shutil.rmtree(registry, ignore_errors=True)
    if layout == "file":
        registry = registry.with_suffix(".yaml")
        write_registry(registry, a.texts[0])
    else:
        write_generations(registry, a.dirs)
    port, admin = free_port(), free_port()
    p = procs.start("modelstamp", [str(binary), "run", "--config",
                                   str(config(tmp, port, admin, upstream, registry))],
                    env=MODELSTAMP_ENV)
    wait_port(admin, timeout=120)
    stop = threading.Event()

    def rewriter():
        # The variants are built before the run: the rewrite itself costs the machine only
        # the write (a few ms) or the swap of `..data`, not the YAML generation.
        generation = 0
        while not stop.wait(1.0):
            generation += 1
            if layout == "file":
                write_registry(registry, a.texts[generation % len(a.texts)])
            else:
                swap_generation(registry, generation % len(a.dirs))

    before = reloads(admin)
    t = threading.Thread(target=rewriter, daemon=True)
    if rewrite:
        t.start()
        time.sleep(2)  # the first rewrites land before measuring
    url = f"http://127.0.0.1:{port}{PATH}"
    out = subprocess.run([str(loadgen), url, str(a.rate), str(a.seconds), "32", str(body_file)],
                         capture_output=True, text=True, check=True)
    stop.set()
    if rewrite:
        t.join()
    r = json.loads(out.stdout)
    r["reloads"] = reloads(admin) - before
    procs.stop(p)
    if layout == "file":
        r["bytes"] = registry.stat().st_size
    else:
        r["bytes"] = sum(f.stat().st_size for f in (registry / "..gen0").iterdir())
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "modelstamp"))
    ap.add_argument("--baseline", default="")
    ap.add_argument("--layouts", default="file,dir",
                    help="file: one YAML file rewritten; dir: one file per version, swapped as a"
                         " ConfigMap update swaps them")
    ap.add_argument("--smoke", action="store_true", help="debug build, 2 s phases, 50 versions")
    a = ap.parse_args()
    profile = "release"
    if a.smoke:
        a.reps, a.seconds, a.versions, profile = 1, 2, 50, "debug"
        a.binary = str(ROOT / "target" / "debug" / "modelstamp")
    loadgen = ROOT / "target" / profile / "examples" / "loadgen"
    layouts = a.layouts.split(",")
    a.texts = [registry_text(a.versions, g) for g in range(2)]
    a.dirs = [registry_files(a.versions, g) for g in range(2)]
    # The baseline predates registry directories: it runs the file layout only.
    targets = [(Path(a.binary), layout) for layout in layouts]
    if a.baseline:
        targets.append((Path(a.baseline), "file"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        body_file = tmp / "body.json"
        body_file.write_text(BODY)
        procs = Procs(tmp)
        try:
            up = free_port()
            procs.start("upstream", [str(targets[0][0]), "demo-model", "--fixed", "--listen",
                                     f"127.0.0.1:{up}"])
            wait_port(up)
            rows = []
            for rep in range(a.reps):
                order = targets if rep % 2 == 0 else targets[::-1]
                for binary, layout in order:
                    for rewrite in ([False, True] if rep % 2 == 0 else [True, False]):
                        r = run_phase(procs, binary, layout, tmp, loadgen, up, body_file, a, rewrite)
                        r.update(binary=str(binary), layout=layout,
                                 phase="rewritten" if rewrite else "static")
                        rows.append(r)
                        print(f"rep {rep} {binary} {layout:4} {r['phase']:9}: p50 {r['p50_us']} µs,"
                              f" p99 {r['p99_us']} µs, p99.9 {r['p999_us']} µs, {r['errors']} errors,"
                              f" {r['reloads']:.0f} reloads", flush=True)
        finally:
            procs.stop_all()
    print(f"\n{a.versions} versions, {a.rate} req/s for {a.seconds:.0f} s per phase, medians of {a.reps}\n")
    print("| binary | layout | MB | phase | p50 µs | p99 µs | p99.9 µs | errors | reloads |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for binary, layout in targets:
        for phase in ("static", "rewritten"):
            sel = [r for r in rows if r["binary"] == str(binary) and r["layout"] == layout
                   and r["phase"] == phase]
            med = lambda k: statistics.median(r[k] for r in sel)  # noqa: E731
            print(f"| {binary} | {layout} | {sel[0]['bytes'] / 1e6:.1f} | {phase} | {med('p50_us'):.0f}"
                  f" | {med('p99_us'):.0f} | {med('p999_us'):.0f}"
                  f" | {sum(r['errors'] for r in sel)} | {med('reloads'):.0f} |")


if __name__ == "__main__":
    main()
