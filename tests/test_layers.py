"""The layer contract, read from the source with `ast`: imports at any depth (a function's too,
and those under TYPE_CHECKING) count, so no cycle or wrong-way dependency can hide.

- shoal -> manager | worker -> common: common imports none of the others; manager and worker
  never import each other nor shoal;
- no package inside manager imports manager.manager (the one place that wires the loops);
- no import cycle between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "manager", "worker", "shoal")
ALLOWED = {"common": set(), "manager": {"common"}, "worker": {"common"},
           "shoal": {"common", "manager", "worker"}}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports (a `from X import y` names X.y when that is a module)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    modules = {_module_name(p, root) for p in files}
    out = {}
    for p in files:
        deps = set()
        for m in imports_of(p, root, modules):
            # `import a.b.c` loads a and a.b too; the edge that matters is to the module itself
            deps.add(m if m in modules else m.rpartition(".")[0])
        out[_module_name(p, root)] = deps - {_module_name(p, root)}
    return out


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(g.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            dtop = dep.split(".")[0]
            if dtop != top and dtop not in ALLOWED[top]:
                bad.append(f"{mod} imports {dep}: {top} may import only {sorted(ALLOWED[top]) or 'nothing of ours'}")
            if top == "manager" and dep == "manager.manager" and mod.count(".") >= 2:
                bad.append(f"{mod} imports manager.manager: a loop is built from what its constructor names")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g.get(start, ()))))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in g:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                    stack.append(nxt); on.add(nxt)
                    work.append((nxt, iter(sorted(g[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop(); on.discard(m); comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_layers_point_one_way_and_nothing_cycles():
    g = graph()
    assert not violations(g), "\n".join(violations(g))
    assert not cycles(g), cycles(g)


def test_the_contract_catches_a_bad_import(tmp_path):
    """The checks fail when a wrong-way import, a loop importing the manager, or a cycle is added
    (a copy of the tree with three deliberate bad modules)."""
    import shutil
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "worker" / "bad_way.py").write_text("def f():\n    from manager import manager\n")
    (tmp_path / "manager" / "scheduler" / "bad_wiring.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from manager.manager import Manager\n")
    (tmp_path / "common" / "cycle_a.py").write_text("from common import cycle_b\n")
    (tmp_path / "common" / "cycle_b.py").write_text("def f():\n    import common.cycle_a\n")
    g = graph(tmp_path)
    found = "\n".join(violations(g))
    assert "worker.bad_way imports manager.manager" in found
    assert "manager.scheduler.bad_wiring imports manager.manager" in found
    assert ["common.cycle_a", "common.cycle_b"] in cycles(g)
