#!/usr/bin/env python3
"""Checks that the modules of the crate import each other as a stack.

For every folder of src/ (src/ itself, src/file/, src/file/kernel/, ...),
the modules directly in it (a file `x.rs` or a folder `x/`) are the nodes of
one graph: module `a` has an arrow to its sibling `b` when any file inside
`a` names a path inside `b` (`use crate::...`, `use super::...`, `self::`,
brace groups expanded, and such paths in code). A module naming its own
ancestors (`super::Item` re-exported by a `mod.rs`) or its own descendants
draws no arrow between siblings. Unit tests may reach anywhere: `tests`
modules and everything after a `#[cfg(... test ...)] mod ...` are skipped,
as are comments and doc comments.

Fails, naming one circle per strongly connected group, when any of these
graphs has a circle that ALLOWED does not list. Prints the layers of every
folder otherwise, bottom first.

Usage: scripts/check-layers.py [src-dir]
"""
import os
import re
import sys

# Arrows that still close a circle and are allowed, as
# (folder relative to src/, from-module, to-module). No new entry may be
# added: the list only shrinks.
ALLOWED = set()

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
root = os.path.normpath(root)


def module_path(path):
    """The module path of a source file: src/file/kernel/take.rs -> (file, kernel, take)."""
    rel = os.path.relpath(path, root)
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


files = {}
for dirpath, dirnames, names in os.walk(root):
    dirnames[:] = [d for d in dirnames if d != "tests"]
    for f in names:
        if f.endswith(".rs") and f != "tests.rs":
            path = os.path.join(dirpath, f)
            files[path] = module_path(path)
modules = set()
for m in files.values():
    for i in range(len(m) + 1):
        modules.add(m[:i])

TEST_MOD = re.compile(r"^\s*#\[cfg\([^\]]*\btest\b[^\]]*\)\]\s*\n\s*(pub(\([^)]*\))?\s+)?mod\s+\w+", re.M)
PATH = re.compile(r"(?<![\w$])((?:crate|super|self)(?:::(?:\w+|\{)))")


def code_of(text):
    m = TEST_MOD.search(text)
    if m:
        text = text[: m.start()]
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("//"):
            continue
        i = line.find("//")
        if i >= 0 and line[:i].count('"') % 2 == 0:
            line = line[:i]
        out.append(line)
    return "\n".join(out)


def expand(text, start):
    """Paths starting at `start` in text, with `{a, b::{c, d}}` groups expanded."""
    # Read the path token by token.
    i = start
    prefix = []
    while True:
        m = re.match(r"(\w+)", text[i:])
        if not m:
            break
        prefix.append(m.group(1))
        i += m.end()
        if text.startswith("::{", i):
            depth, j = 0, i + 2
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            inner = text[i + 3 : j]
            result = []
            for item in split_top(inner):
                item = item.strip()
                if not item:
                    continue
                for sub in expand(item, 0):
                    result.append(prefix + sub)
            return result or [prefix]
        if text.startswith("::", i):
            i += 2
            continue
        break
    return [prefix]


def split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def resolve(here, path):
    """The module a path names, from the module `here`, or None."""
    if path[0] == "crate":
        base, rest = (), path[1:]
    else:
        base = list(here)
        rest = list(path)
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest.pop(0)
        base = tuple(base)
    target = base
    for seg in rest:
        if target + (seg,) in modules:
            target = target + (seg,)
        else:
            break
    return target


edges = {}  # folder -> {a: {b: [file]}}
for path, here in sorted(files.items()):
    text = code_of(open(path, encoding="utf-8").read())
    for m in PATH.finditer(text):
        for p in expand(text, m.start()):
            if p[0] == "self" and len(p) == 1:
                continue
            target = resolve(here, p)
            if target is None:
                continue
            k = 0
            while k < min(len(here), len(target)) and here[k] == target[k]:
                k += 1
            if k == len(here) or k == len(target):
                continue  # an ancestor or a descendant
            folder, a, b = here[:k], here[k], target[k]
            edges.setdefault(folder, {}).setdefault(a, {}).setdefault(b, set()).add(
                os.path.relpath(path, root)
            )


def sccs(nodes, succ):
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def a_cycle(comp, succ):
    """One circle through the group, as a list of modules."""
    comp = set(comp)
    start = min(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in succ.get(path[-1], ()) if w in comp)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


failed = False
used_allowances = set()
layers = []
for folder in sorted(edges):
    graph = edges[folder]
    name = "src/" + "/".join(folder) if folder else "src"
    succ = {}
    for a, targets in graph.items():
        for b in targets:
            key = ("/".join(folder), a, b)
            if key in ALLOWED:
                used_allowances.add(key)
                continue
            succ.setdefault(a, set()).add(b)
    nodes = set(graph) | {b for t in graph.values() for b in t}
    for comp in sccs(nodes, succ):
        if len(comp) < 2:
            continue
        failed = True
        cycle = a_cycle(comp, succ)
        print(f"import circle in {name}: " + " -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            print(f"  {a} -> {b}: " + ", ".join(sorted(graph[a][b])))
    if not failed:
        order, seen = [], set()

        def place(m):
            if m in seen:
                return
            seen.add(m)
            for t in sorted(succ.get(m, ())):
                place(t)
            order.append(m)

        for m in sorted(nodes):
            place(m)
        layers.append(f"{name}: " + " ".join(order))

for key in sorted(ALLOWED - used_allowances):
    print("allowed arrow no longer exists, remove it from ALLOWED:", key)
    failed = True

if failed:
    sys.exit(1)
print("no import circle in " + root + "; modules bottom-up, per folder:")
for line in layers:
    print("  " + line)
