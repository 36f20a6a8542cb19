#!/usr/bin/env python3
"""Checks that the modules of src/redis/ import each other as a stack.

Reads every `use super::...` / `use crate::redis::...` of src/redis/**/*.rs
(and `super::x::` paths in code), builds the graph of sibling modules, and
fails when it has a cycle. Usage: scripts/check-layers.py [src/redis]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src", "redis")
root = os.path.normpath(root)
mods = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        top = rel.split(os.sep)[0]
        top = top[:-3] if top.endswith(".rs") else top
        if top == "mod":
            continue
        mods.setdefault(top, []).append(path)

edges = {m: set() for m in mods}
pat = re.compile(r"(?:super|crate::redis)::(\w+)")
for m, paths in mods.items():
    for path in paths:
        text = open(path, encoding="utf-8").read()
        # Unit tests may reach anywhere.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        for line in text.splitlines():
            if line.strip().startswith("//"):
                continue
            for target in pat.findall(line):
                # `super::` inside a subdirectory module points at its parent.
                if os.path.dirname(path) != root and line.count("super::super") == 0 and "crate::redis" not in line:
                    continue
                if target in mods and target != m:
                    edges[m].add(target)

# Cycle detection (iterative DFS with colours).
WHITE, GREY, BLACK = 0, 1, 2
colour = {m: WHITE for m in mods}
stack_path = []
cycles = []

def visit(m):
    colour[m] = GREY
    stack_path.append(m)
    for t in sorted(edges[m]):
        if colour[t] == GREY:
            cycles.append(stack_path[stack_path.index(t):] + [t])
        elif colour[t] == WHITE:
            visit(t)
    stack_path.pop()
    colour[m] = BLACK

for m in sorted(mods):
    if colour[m] == WHITE:
        visit(m)

if cycles:
    for c in cycles:
        print("import cycle:", " -> ".join(c))
    sys.exit(1)

# Print the layers, bottom first.
order, seen = [], set()
def place(m):
    if m in seen:
        return
    seen.add(m)
    for t in sorted(edges[m]):
        place(t)
    order.append(m)
for m in sorted(mods):
    place(m)
print("no import cycle in", root + ";", "modules bottom-up:", " ".join(order))
