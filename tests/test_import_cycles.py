"""No import cycles in backend/ nor in the firmware package (firmware/micropython/hemsfw).

The import graph is read from the sources with `ast`, every import statement counted wherever
it is: at module level, inside a function (a lazy import still ties the two modules together)
and under `if TYPE_CHECKING:` or the firmware's `if False:` (a type-only cycle is still two
modules that need each other; docs/firmware.md, "Types").
A cycle is a strongly connected component of that graph with more than one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: top-level package -> the folder that holds it
ROOTS = {"backend": REPO, "hemsfw": REPO / "firmware" / "micropython"}

#: Cycles known when this test was written, each removed by work in progress; an entry here only
#: tolerates that cycle (or what is left of it) in backend/.  hemsfw gets no entry, ever.
KNOWN_BACKEND_CYCLES: list[frozenset[str]] = []


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """Module name -> source file, for every .py under each root package, and every .pyi
    without a .py (a stub-only module such as hemsfw/interfaces.pyi, which mypy reads)."""
    out: dict[str, Path] = {}
    for pkg, base in roots.items():
        for path in sorted([*(base / pkg).rglob("*.py"), *(base / pkg).rglob("*.pyi")]):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.setdefault(".".join(parts), path)
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its longest prefix that is one of `modules` (an import of a package's
    attribute lands on the package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` (file `path`) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub, `from mod import f` only mod
            targets = [mod + "." + a.name if mod + "." + a.name in modules else mod
                       for a in node.names]
        for t in targets:
            hit = _known(t, modules)
            if hit is not None and hit != name:
                out.add(hit)
    return out


def import_graph(roots: dict[str, Path]) -> dict[str, set[str]]:
    modules = module_files(roots)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def _show(cs: Iterable[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in cs)


def test_hemsfw_has_no_import_cycle() -> None:
    found = [c for c in cycles(import_graph(ROOTS)) if any(m.startswith("hemsfw") for m in c)]
    assert not found, "import cycles in hemsfw: " + _show(found)


def test_backend_has_no_import_cycle_but_the_known_ones() -> None:
    found = [c for c in cycles(import_graph(ROOTS))
             if not any(c <= known for known in KNOWN_BACKEND_CYCLES)]
    assert not found, "import cycles in backend: " + _show(found)


def test_every_known_backend_cycle_still_exists() -> None:
    """An entry of KNOWN_BACKEND_CYCLES whose cycle is gone must be deleted, so that the cycle
    cannot come back unnoticed."""
    found = cycles(import_graph(ROOTS))
    stale = [k for k in KNOWN_BACKEND_CYCLES if not any(c <= k for c in found)]
    assert not stale, "no longer cycles, delete from KNOWN_BACKEND_CYCLES: " + _show(stale)


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {"pkg": tmp_path}


def test_a_cycle_through_a_function_local_import_is_found(tmp_path: Path) -> None:
    roots = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.a import g\n    return g\n",
        "c.py": "import pkg.a\n"})
    assert cycles(import_graph(roots)) == [frozenset({"pkg.a", "pkg.b"})]


def test_a_type_only_and_relative_cycle_is_found(tmp_path: Path) -> None:
    roots = _package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "",
        "sub/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from ..y import Y\n",
        "y.py": "from .sub import x\n"})
    assert cycles(import_graph(roots)) == [frozenset({"pkg.sub.x", "pkg.y"})]


def test_modules_that_import_without_a_cycle_pass(tmp_path: Path) -> None:
    roots = _package(tmp_path, {
        "__init__.py": "from pkg import a\n",
        "a.py": "from pkg import b\nimport json\n",
        "b.py": "from pkg.c import f\n",
        "c.py": "def f():\n    import os\n    return os\n"})
    assert cycles(import_graph(roots)) == []
