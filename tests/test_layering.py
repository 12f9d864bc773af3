"""The layering of src/ntpy, checked from the source (stdlib ``ast`` only; nothing is imported).

Why: the sans-IO core, the one-way pipeline and the absence of import cycles are what let the
simulator run the production core and let a new feature land in one place. Left unchecked they
erode one function-level import at a time, so CI holds them:

(a) ``ntpy.core`` imports, at run time, only ``ntpy.core.*`` and none of the I/O, time,
    thread or OS modules in ``CORE_FORBIDDEN`` (and calls neither ``open`` nor ``__import__``);
(b) no import cycle between modules of ``ntpy``;
(c) no import cycle between packages, and every package imports only what ``ALLOWED`` lets it;
(d) no Python file in ``src/`` is over ``MAX_LINES`` lines.

"At run time" means every import that executes: module level, class bodies, function bodies
(a function-level import is how a cycle hides, so it counts) and ``importlib.import_module`` /
``__import__`` with a literal name. Only imports under ``if TYPE_CHECKING:`` are left out.
An edge goes to the module an import names (``from ntpy.clock import x`` -> ``ntpy.clock.x``
if that is a module, else the package ``ntpy.clock``); the implicit run of parent
``__init__`` files is not an edge, as in import-linter.

``python tests/test_layering.py`` prints the same findings plus the package dependency matrix,
to check a merged tree quickly without pytest.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TOP = "ntpy"

MAX_LINES = 600

CORE_FORBIDDEN = frozenset(
    {
        "socket",
        "select",
        "selectors",
        "asyncio",
        "time",
        "threading",
        "ctypes",
        "os",
        "subprocess",
        "signal",
        "mmap",
        "datetime",
        "random",
    }
)
"""Top-level modules the sans-IO core must not import: the core takes ``now`` and bytes and
returns decisions; reading clocks, sockets, files, threads or randomness is the shell's job."""

CORE_FORBIDDEN_CALLS = frozenset({"open", "__import__"})

# The intended package layering: the single source of truth. Each package lists the ntpy
# packages it may import directly (at run time); the graph of this table must stay acyclic.
# From DESIGN.md: the pipeline only points down. core is sans-IO and imports nothing;
# clock (the Clock interface and its adapters) and config (ntp.conf -> validated dataclasses,
# which core sees only under TYPE_CHECKING) build on core; metrics renders a status snapshot
# and never reaches into the daemon; sim runs the production core on simulated clocks, so
# core and clock only; daemon is the I/O shell that assembles all of these; cli (the ``ntpy``
# command) sits on top, and ``python -m ntpy`` (``ntpy.__main__``) only calls cli.
# ``ntpy`` itself (``ntpy/__init__.py``, only ``__version__``) runs before any submodule, so
# every package may import it (not listed) and it imports nothing.
# A new package (nts, fastpath, ...) fails the test until it is given its row here, e.g. nts
# on core (and config) with daemon and cli above it.
ALLOWED: dict[str, frozenset[str]] = {
    "ntpy": frozenset(),
    "core": frozenset(),
    "clock": frozenset({"core"}),
    "config": frozenset({"core"}),
    "metrics": frozenset({"core", "config"}),
    "sim": frozenset({"core", "clock"}),
    "daemon": frozenset({"core", "clock", "config", "metrics"}),
    "cli": frozenset({"core", "clock", "config", "daemon"}),
    "__main__": frozenset({"cli"}),
}


def may_import(a: str, b: str) -> bool:
    """Whether package ``a`` may import package ``b`` (the root ``ntpy`` is always allowed)."""
    return a == b or b == TOP or b in ALLOWED.get(a, frozenset())


# --- the import graph -------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement's effect: ``source`` imports ``target`` at ``path``:``line``."""

    source: str
    target: str
    path: str
    line: int
    text: str
    in_function: bool
    type_only: bool
    internal: bool

    def where(self) -> str:
        how = " (in a function)" if self.in_function else ""
        return f"{self.path}:{self.line}{how}: {self.text}"


@dataclass(frozen=True)
class Finding:
    """One violation: a message, and the source files it involves."""

    check: str
    message: str
    files: frozenset[str]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_pkg: bool, path: str, lines: list[str], known: set[str]):
        self.module = module
        self.package = module if is_pkg else module.rpartition(".")[0]
        self.path = path
        self.lines = lines
        self.known = known
        self.depth_fn = 0
        self.depth_tc = 0
        self.found: list[Import] = []
        self.calls: list[tuple[int, str]] = []

    # scope tracking
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._in_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._in_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._in_function(node)

    def _in_function(self, node: ast.AST) -> None:
        self.depth_fn += 1
        self.generic_visit(node)
        self.depth_fn -= 1

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.depth_tc += 1
        for child in node.body:
            self.visit(child)
        self.depth_tc -= 1
        for child in node.orelse:
            self.visit(child)

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for target in dict.fromkeys(self._resolve(alias.name) for alias in node.names):
            self._add(node, target)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        targets = (f"{base}.{a.name}" for a in node.names)
        for target in dict.fromkeys(t if t in self.known else self._resolve(base) for t in targets):
            self._add(node, target)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if isinstance(func, ast.Name) and func.id in CORE_FORBIDDEN_CALLS:
            self.calls.append((node.lineno, func.id))
        if (
            name in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node, self._resolve(node.args[0].value))
        self.generic_visit(node)

    def _resolve(self, dotted: str) -> str:
        """The ntpy module an import executes (longest known prefix), or the external name."""
        parts = dotted.split(".")
        if parts[0] != TOP:
            return dotted
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.known:
                return candidate
        return dotted

    def _add(self, node: ast.stmt | ast.expr, target: str) -> None:
        text = " ".join(
            line.strip() for line in self.lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
        )
        self.found.append(
            Import(
                source=self.module,
                target=target,
                path=self.path,
                line=node.lineno,
                text=text,
                in_function=self.depth_fn > 0,
                type_only=self.depth_tc > 0,
                internal=target.split(".")[0] == TOP,
            )
        )


@dataclass
class Graph:
    modules: dict[str, str]  # module -> path as shown (src/ntpy/...)
    lines: dict[str, int]  # path -> line count (every .py under src/)
    imports: list[Import]
    calls: dict[str, list[tuple[int, str]]]  # module -> forbidden calls

    def package(self, module: str) -> str:
        """``ntpy.daemon.app`` -> ``daemon``; ``ntpy`` -> ``ntpy``; ``ntpy.__main__`` -> itself."""
        parts = module.split(".")
        if len(parts) == 1:
            return TOP
        return parts[1]

    def all_packages(self) -> set[str]:
        return {self.package(m) for m in self.modules}

    def runtime(self) -> list[Import]:
        return [i for i in self.imports if not i.type_only]

    def module_edges(self) -> dict[tuple[str, str], list[Import]]:
        edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
        for imp in self.runtime():
            if imp.internal and imp.target in self.modules and imp.target != imp.source:
                edges[(imp.source, imp.target)].append(imp)
        return edges

    def package_edges(self) -> dict[tuple[str, str], list[Import]]:
        edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
        for (src, dst), imps in self.module_edges().items():
            a, b = self.package(src), self.package(dst)
            if a != b:
                edges[(a, b)].extend(imps)
        return edges


def build_graph(src: Path = SRC) -> Graph:
    paths = sorted((src / TOP).rglob("*.py"))
    known = {module_name(p, src) for p in paths}
    modules: dict[str, str] = {}
    imports: list[Import] = []
    calls: dict[str, list[tuple[int, str]]] = {}
    for path in paths:
        rel = path.relative_to(src.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        name = module_name(path, src)
        modules[name] = rel
        collector = _Collector(name, path.name == "__init__.py", rel, text.splitlines(), known)
        collector.visit(ast.parse(text, filename=str(path)))
        imports.extend(collector.found)
        calls[name] = collector.calls
    lines = {
        p.relative_to(src.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(src.rglob("*.py"))
    }
    return Graph(modules, lines, imports, calls)


# --- graph algorithms -------------------------------------------------------------------------


def strongly_connected(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's SCCs with more than one node, each sorted, in sorted order."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in sorted(set(nodes) | set(succ)):
        if n not in index:
            visit(n)
    return sorted(out)


def shortest_cycle(comp: list[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """A shortest cycle through the first node of ``comp`` (BFS), as a closed path."""
    members = set(comp)
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        if a in members and b in members:
            succ[a].append(b)
    start = comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(succ[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a true SCC


def table_cycle(table: Mapping[str, Iterable[str]]) -> list[str] | None:
    comps = strongly_connected(table, ((a, b) for a, bs in table.items() for b in bs))
    return comps[0] if comps else None


# --- the checks -------------------------------------------------------------------------------


def _indent(imps: Iterable[Import]) -> str:
    return "".join(f"\n    {i.where()}" for i in sorted(imps, key=lambda i: (i.path, i.line)))


def check_core(g: Graph) -> list[Finding]:
    out = []
    for imp in g.runtime():
        if g.package(imp.source) != "core":
            continue
        if imp.internal and g.package(imp.target) != "core":
            why = f"imports {imp.target} (core may import only ntpy.core.* at run time)"
        elif not imp.internal and imp.target.split(".")[0] in CORE_FORBIDDEN:
            why = f"imports {imp.target} (the core is sans-IO)"
        else:
            continue
        msg = f"{imp.source} {why}:\n    {imp.where()}"
        out.append(Finding("core", msg, frozenset({imp.path})))
    for module, calls in sorted(g.calls.items()):
        if g.package(module) != "core":
            continue
        for line, name in calls:
            path = g.modules[module]
            msg = f"{module} calls {name}() (the core reads no files):\n    {path}:{line}"
            out.append(Finding("core", msg, frozenset({path})))
    return out


def check_module_cycles(g: Graph) -> list[Finding]:
    edges = g.module_edges()
    out = []
    for comp in strongly_connected(g.modules, edges):
        cycle = shortest_cycle(comp, edges)
        inside = [i for (a, b), imps in edges.items() if a in comp and b in comp for i in imps]
        msg = (
            f"import cycle among {len(comp)} modules: {' -> '.join(cycle)}"
            + (f"\n  (component: {', '.join(comp)})" if len(comp) > len(cycle) - 1 else "")
            + "\n  imports inside it:"
            + _indent(inside)
        )
        out.append(Finding("module-cycles", msg, frozenset(i.path for i in inside)))
    return out


def check_package_cycles(g: Graph) -> list[Finding]:
    edges = g.package_edges()
    out = []
    for comp in strongly_connected(g.all_packages(), edges):
        cycle = shortest_cycle(comp, edges)
        inside = [i for (a, b), imps in edges.items() if a in comp and b in comp for i in imps]
        msg = f"package cycle: {' -> '.join(cycle)}\n  imports inside it:" + _indent(inside)
        out.append(Finding("package-cycles", msg, frozenset(i.path for i in inside)))
    return out


def check_package_layers(g: Graph) -> list[Finding]:
    out = []
    for pkg in sorted(g.all_packages() - set(ALLOWED)):
        msg = f"package ntpy.{pkg} has no row in ALLOWED (tests/test_layering.py): add one"
        out.append(Finding("layers", msg, frozenset()))
    for (a, b), imps in sorted(g.package_edges().items()):
        if may_import(a, b):
            continue
        may = ", ".join(sorted(ALLOWED.get(a, ()))) or "no other ntpy package"
        msg = f"{a} imports {b}, but {a} may import only {may}:" + _indent(imps)
        out.append(Finding("layers", msg, frozenset(i.path for i in imps)))
    return out


def check_file_sizes(g: Graph) -> list[Finding]:
    return [
        Finding("size", f"{path} has {n} lines (limit {MAX_LINES})", frozenset({path}))
        for path, n in sorted(g.lines.items())
        if n > MAX_LINES
    ]


CHECKS = {
    "core": check_core,
    "module-cycles": check_module_cycles,
    "package-cycles": check_package_cycles,
    "layers": check_package_layers,
    "size": check_file_sizes,
}


# --- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


def _fail_on(findings: list[Finding]) -> None:
    assert not findings, "\n\n" + "\n\n".join(f.message for f in findings)


def test_allowed_table_is_acyclic() -> None:
    assert table_cycle(ALLOWED) is None, f"ALLOWED itself has a cycle: {table_cycle(ALLOWED)}"
    for pkg, deps in ALLOWED.items():
        assert pkg not in deps
        assert deps <= set(ALLOWED), f"{pkg} lists unknown packages {deps - set(ALLOWED)}"


def test_graph_sees_the_tree(graph: Graph) -> None:
    # guard against a checker that silently finds nothing
    assert len(graph.modules) > 50 and "ntpy.core.packet" in graph.modules
    assert {"core", "clock", "config", "daemon", "cli", "sim", "metrics"} <= graph.all_packages()
    assert len(graph.package_edges()) >= 5


def test_core_is_sans_io(graph: Graph) -> None:
    _fail_on(check_core(graph))


def test_no_module_cycles(graph: Graph) -> None:
    _fail_on(check_module_cycles(graph))


def test_no_package_cycles(graph: Graph) -> None:
    _fail_on(check_package_cycles(graph))


def test_packages_follow_layers(graph: Graph) -> None:
    _fail_on(check_package_layers(graph))


def test_no_file_over_limit(graph: Graph) -> None:
    _fail_on(check_file_sizes(graph))


# --- self-tests of the checker on a small synthetic tree ----------------------------------------


def _tree(tmp: Path, files: Mapping[str, str]) -> Graph:
    src = tmp / "src"
    for rel, body in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    for d in {p for p in (src / TOP).rglob("*") if p.is_dir()} | {src / TOP}:
        (d / "__init__.py").touch()
    return build_graph(src)


def test_checker_finds_hidden_cycle_and_ignores_type_checking(tmp_path: Path) -> None:
    g = _tree(
        tmp_path,
        {
            "ntpy/clock/a.py": "from ntpy.clock import b\n",
            "ntpy/clock/b.py": "def f():\n    from . import a\n",
            "ntpy/core/x.py": (
                "from typing import TYPE_CHECKING\nimport time\n"
                "if TYPE_CHECKING:\n    from ntpy.config import y\nelse:\n    import socket\n"
            ),
            "ntpy/core/z.py": "from ntpy.clock.a import q\nopen('f')\n",
            "ntpy/config/y.py": "import importlib\nimportlib.import_module('ntpy.core.x')\n",
        },
    )
    cycles = check_module_cycles(g)
    assert len(cycles) == 1 and "ntpy.clock.a -> ntpy.clock.b -> ntpy.clock.a" in cycles[0].message
    assert "src/ntpy/clock/b.py:2 (in a function): from . import a" in cycles[0].message
    core = "\n".join(f.message for f in check_core(g))
    assert "imports time" in core and "imports socket" in core and "imports ntpy.clock.a" in core
    assert "calls open()" in core and "ntpy.config" not in core
    assert ("config", "core") in g.package_edges()  # import_module with a literal counts
    assert ("core", "config") not in g.package_edges()  # TYPE_CHECKING does not
    layers = "\n".join(f.message for f in check_package_layers(g))
    assert "core imports clock" in layers


def test_checker_finds_package_cycle_and_big_file(tmp_path: Path) -> None:
    g = _tree(
        tmp_path,
        {
            "ntpy/daemon/app.py": "import ntpy.metrics.web\n" + "\n" * MAX_LINES,
            "ntpy/metrics/web.py": "from ntpy.daemon.app import App\n",
            "ntpy/nts/ke.py": "",
        },
    )
    (cycle,) = check_package_cycles(g)
    assert "package cycle: daemon -> metrics -> daemon" in cycle.message
    assert [f.message for f in check_file_sizes(g)] == [
        f"src/ntpy/daemon/app.py has {MAX_LINES + 1} lines (limit {MAX_LINES})"
    ]
    layers = "\n".join(f.message for f in check_package_layers(g))
    assert "ntpy.nts has no row in ALLOWED" in layers
    assert "metrics imports daemon" in layers


# --- the report -------------------------------------------------------------------------------


def report(g: Graph) -> str:
    pkgs = [p for p in ALLOWED if p in g.all_packages()]
    pkgs += sorted(g.all_packages() - set(pkgs))
    edges = g.package_edges()
    width = max(len(p) for p in pkgs) + 1
    out = [
        "package dependencies (row imports column; number = import statements;",
        "  '.' = allowed and unused, '-' = not allowed, '!' suffix = not allowed but used):",
    ]
    out.append(" " * width + " ".join(f"{p:>7}" for p in pkgs))
    for a in pkgs:
        cells = []
        for b in pkgs:
            n = len(edges.get((a, b), ()))
            ok = may_import(a, b)
            if a == b:
                cells.append("")
            elif n:
                cells.append(f"{n}" if ok else f"{n}!")
            else:
                cells.append("." if ok else "-")
        out.append(f"{a:<{width}}" + " ".join(f"{c:>7}" for c in cells))
    total = 0
    for name, check in CHECKS.items():
        findings = check(g)
        total += len(findings)
        out.append(f"\n== {name}: {len(findings)} finding(s)")
        for f in findings:
            out.append("-- " + f.message.replace("\n", "\n   "))
    out.append(f"\n{total} finding(s) in {len(g.modules)} modules")
    return "\n".join(out)


if __name__ == "__main__":
    graph_ = build_graph(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else SRC)
    print(report(graph_))
    sys.exit(1 if any(check(graph_) for check in CHECKS.values()) else 0)
