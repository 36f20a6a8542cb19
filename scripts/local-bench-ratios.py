#!/usr/bin/env python3
"""Prints lockyard's time over tokio's and async-lock's for every group of
the last `cargo bench --bench local` run, from criterion's saved estimates
(`$CARGO_TARGET_DIR/criterion`, default `target/criterion`).

    cargo bench --bench local -- --warm-up-time 1 --measurement-time 2
    scripts/local-bench-ratios.py
"""
import json
import os
import sys
from pathlib import Path

root = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
if len(sys.argv) > 1:
    root = Path(sys.argv[1])


def mean(path):
    with open(path / "new" / "estimates.json") as f:
        return json.load(f)["mean"]["point_estimate"]


def fmt(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


# (group, lockyard bench, rivals): the rivals are the benches of the same
# group whose name is lockyard's with "lockyard" replaced.
rows = []
for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    benches = {}
    for bench in group.rglob("new/estimates.json"):
        name = str(bench.parent.parent.relative_to(group))
        benches[name] = mean(bench.parent.parent)
    for name, ours in sorted(benches.items()):
        if "lockyard" not in name:
            continue
        cells = [f"{group.name}/{name}", fmt(ours)]
        for rival in ("tokio", "async_lock"):
            theirs = benches.get(name.replace("lockyard", rival))
            cells.append(f"{rival} {fmt(theirs)} ratio {ours / theirs:.2f}" if theirs else f"{rival} -")
        rows.append(cells)
for cells in rows:
    print(" | ".join(cells))
