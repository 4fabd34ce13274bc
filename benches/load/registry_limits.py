#!/usr/bin/env python3
"""How long, and how much memory, `modelstamp check` takes on large and hostile registries.

Each registry is written to a temporary directory next to a one-route config; `check` (the same
parse and validation a reload runs) is timed (median of REPS runs) and its peak RSS read from
GNU time. Cases:

- a plain registry of about 50 MB (5,800 realistic versions, as in reload.py);
- an exponential alias bomb (ten levels of ten aliases: 10^10 nodes if expanded);
- one large anchored record aliased by a thousand versions (linear text, quadratic expansion);
- nesting 10,000 deep;
- a version key given twice.

Usage: registry_limits.py [--binary PATH] [--reps 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, MODELSTAMP_ENV  # noqa: E402
from reload import registry_text  # noqa: E402


def bomb():
    lines = ["models:", "  churn:", "    versions:",
             '      "1": { training_data: { name: d, upstream_tables: &a0 [x, x, x, x, x, x, x, x, x, x] } }']
    for i in range(1, 10):
        p = i - 1
        refs = ", ".join([f"*a{p}"] * 10)
        lines.append(f'      "{i + 1}": {{ training_data: {{ name: d, upstream_tables: &a{i} [{refs}] }} }}')
    return "\n".join(lines) + "\n"


def replay():
    features = ", ".join(f"{{ name: f{i}, type: double }}" for i in range(2000))
    lines = ["models:", "  churn:", "    versions:", f'      "0": &r {{ input_schema: [{features}] }}']
    lines += [f'      "{v}": *r' for v in range(1, 1000)]
    return "\n".join(lines) + "\n"


def deep():
    return "models:\n  churn:\n    versions:\n      \"1\": { input_schema: " + "[" * 10000 + "]" * 10000 + " }\n"


def twice():
    return 'models:\n  churn:\n    versions:\n      "1": {}\n      1: {}\n'


def run(binary, cfg, tmp):
    """Wall time, peak RSS in KiB (GNU time: a child forked from this Python process would
    count the parent's pages it inherited), exit code, output."""
    rss = tmp / "rss"
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-o", str(rss), "-f", "%M", str(binary), "check", "--config",
                        str(cfg)], capture_output=True, text=True, env={**os.environ, **MODELSTAMP_ENV})
    elapsed = time.perf_counter() - start
    return elapsed, int(rss.read_text().split()[-1]), p.returncode, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "modelstamp"))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    cases = [
        ("plain, 5,800 versions", registry_text(5800, 0).decode()),
        ("exponential alias bomb (untyped where it stands)", bomb()),
        ("one record aliased 1,000 times", replay()),
        ("nesting 10,000 deep", deep()),
        ("a version given twice", twice()),
    ]
    print("| registry | size | exit | median time ms | peak RSS MiB | first error |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        cfg = t / "modelstamp.toml"
        cfg.write_text('[[routes]]\nname = "churn"\nmodel = "churn"\nupstream = "127.0.0.1:9"\n'
                       'match = { path_prefix = "/" }\n[registry]\nmax_bytes = 104857600\n')
        for name, text in cases:
            (t / "registry.yaml").write_text(text)
            runs = [run(a.binary, cfg, t) for _ in range(a.reps)]
            ms = statistics.median(r[0] for r in runs) * 1000
            rss = max(r[1] for r in runs) / 1024
            code, out = runs[0][2], runs[0][3]
            errors = [l.strip() for l in out.splitlines() if "registry.yaml" in l or "error" in l.lower()]
            first = errors[0] if code != 0 and errors else "-"
            first = first.replace(str(t) + "/", "")[:140].replace("|", "\\|")
            size = len(text.encode())
            size = f"{size / 1e6:.1f} MB" if size > 1e6 else f"{size / 1e3:.1f} KB"
            print(f"| {name} | {size} | {code} | {ms:.0f} | {rss:.1f} | {first} |", flush=True)


if __name__ == "__main__":
    main()
