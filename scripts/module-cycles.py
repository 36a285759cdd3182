#!/usr/bin/env python3
"""Import cycles between the files of each crate: file A naming an item of file B (`use crate::b`,
`crate::b::x`, `super::b`) while B names A, directly or around a longer loop. Prints each cycle
and exits 1 when there is one. Usage: scripts/module-cycles.py [CRATE_SRC_DIR ...]"""
import os
import re
import sys

def modules(src):
    """module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main", "mod"):
                rel = rel[:-1]
            out[tuple(rel)] = path
    return out

USE = re.compile(r"\buse\s+((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)(?:::\{([^;]*)\})?\s*;", re.S)
PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")

def resolve(mod, path, mods):
    """The file a path like crate::a::b::Item (seen in module `mod`) points into."""
    parts = path.split("::")
    base = list(mod)
    if parts[0] == "crate":
        base = []
        parts = parts[1:]
    while parts and parts[0] in ("super", "self"):
        if parts[0] == "super":
            base = base[:-1]
        parts = parts[1:]
    full = base + parts
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None

def edges(mods):
    g = {m: set() for m in mods}
    for m, f in mods.items():
        text = open(f, encoding="utf-8").read()
        # Tests may reach into their parent freely: leave #[cfg(test)] modules out.
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
        text = re.sub(r"//[^\n]*", "", text)
        paths = []
        for head, group in USE.findall(text):
            if group:
                for item in re.split(r",(?![^{]*\})", group):
                    item = item.strip().split(" as ")[0].split("::{")[0]
                    if item and item != "self":
                        paths.append(head + "::" + item)
                    elif item == "self":
                        paths.append(head)
            else:
                paths.append(head)
        paths += PATH.findall(text)
        for p in paths:
            t = resolve(m, p, mods)
            # A module naming its own children is not an import between files.
            if t is not None and t != m and t[: len(m)] != m:
                g[m].add(t)
    return g

def cycles(g):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)
    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            strong(v)
    return out

def main(dirs):
    found = 0
    for src in dirs:
        mods = modules(src)
        for comp in cycles(edges(mods)):
            found += 1
            print(f"{src}: " + " <-> ".join(sorted(os.path.relpath(mods[m], src) for m in comp)))
    if not found:
        print(f"no import cycles between files in {len(dirs)} crates")
    return 1 if found else 0

if __name__ == "__main__":
    dirs = sys.argv[1:] or sorted(
        os.path.join(d, "src")
        for d in ["crates/" + c for c in os.listdir("crates")] + ["backends/" + b for b in os.listdir("backends")] + ["minervad", "minerva-cli", "tests"]
        if os.path.isdir(os.path.join(d, "src"))
    )
    sys.exit(main(dirs))
