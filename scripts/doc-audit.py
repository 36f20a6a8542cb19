#!/usr/bin/env python3
"""Lists public functions and types of the library that have no doc example.

An item "has an example" when its own `///` block holds a code fence (```).
Counts `pub` fns (also in `pub trait` bodies) and `pub` struct/enum/trait/type
items under src/, skipping `#[cfg(test)]` modules, test files and
`#[doc(hidden)]` items. A source scan, not rustdoc: good enough to measure.

    scripts/doc-audit.py [--all] [EXCLUDED_PREFIX ...]   (e.g. src/local)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
ITEM = re.compile(
    r"^\s*pub\s+(?:(?:const|async|unsafe|extern\s+\"C\")\s+)*(fn|struct|enum|trait|type)\s+(\w+)"
)
TRAIT_FN = re.compile(r"^\s*(?:(?:async|unsafe)\s+)*fn\s+(\w+)")


def scan(path):
    lines = path.read_text().splitlines()
    out = []
    depth = 0
    skip_until = None  # depth at which a skipped (test) block ends
    trait_depth = None  # depth inside a pub trait body
    pending_cfg_test = False
    for i, line in enumerate(lines):
        s = line.strip()
        code = s.split("//")[0] if not s.startswith("//") else ""
        if skip_until is None:
            if s.startswith(("#[cfg(test)]", "#[cfg(all(test", "#[doc(hidden)]")):
                pending_cfg_test = True
            elif pending_cfg_test and re.match(r"(pub(\(\w+\))?\s+)?mod\s+\w+\s*\{", s):
                skip_until = depth
                pending_cfg_test = False
            elif pending_cfg_test and not s.startswith("#"):
                pending_cfg_test = False
            if skip_until is None:
                m = ITEM.match(line)
                kind = name = None
                if m:
                    kind, name = m.group(1), m.group(2)
                elif trait_depth is not None and depth == trait_depth + 1:
                    t = TRAIT_FN.match(line)
                    if t:
                        kind, name = "fn", t.group(1)
                if kind:
                    doc, hidden = [], False
                    j = i - 1
                    while j >= 0:
                        p = lines[j].strip()
                        if p.startswith("///") or p.startswith("#[doc = "):
                            doc.append(p)
                        elif p.startswith("#[") or p.startswith("#!") or p.endswith(")]") or p.startswith("//") and not p.startswith("///"):
                            if "doc(hidden)" in p:
                                hidden = True
                        else:
                            break
                        j -= 1
                    if not hidden:
                        has = any("```" in d for d in doc)
                        out.append((kind, name, i + 1, has))
                    if kind == "trait" and trait_depth is None:
                        trait_depth = depth
        opens, closes = code.count("{"), code.count("}")
        depth += opens - closes
        if skip_until is not None and depth <= skip_until and closes:
            skip_until = None
        if trait_depth is not None and depth <= trait_depth and closes:
            trait_depth = None
    return out


def main():
    args = sys.argv[1:]
    show_all = "--all" in args
    excludes = [a for a in args if not a.startswith("--")]
    totals = {"fn": [0, 0], "type": [0, 0]}
    missing = {}
    for path in sorted(ROOT.rglob("*.rs")):
        rel = path.relative_to(ROOT.parent).as_posix()
        if path.name == "tests.rs" or "/tests/" in rel or path.name == "loom.rs":
            continue
        if any(rel.startswith(e) for e in excludes):
            continue
        for kind, name, line, has in scan(path):
            bucket = "fn" if kind == "fn" else "type"
            totals[bucket][0] += 1
            totals[bucket][1] += has
            if not has or show_all:
                missing.setdefault(rel, []).append(f"{kind} {name} (:{line}){'' if not has else ' ok'}")
    for rel, items in missing.items():
        print(f"{rel}: {len(items)}")
        for it in items:
            print(f"    {it}")
    for b, (n, h) in totals.items():
        print(f"{b}s: {h} of {n} with an own example ({n - h} without)")


if __name__ == "__main__":
    main()
