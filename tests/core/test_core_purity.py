"""The sans-IO core must not reach for sockets, clocks, threads or files."""

import ast
import pathlib

import ntpy.core

FORBIDDEN = {
    "socket",
    "asyncio",
    "selectors",
    "time",
    "ctypes",
    "os",
    "threading",
    "subprocess",
    "signal",
    "datetime",
    "random",
}
CORE = pathlib.Path(ntpy.core.__file__).parent


def test_core_imports_no_io_modules() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {
                "open",
                "__import__",
            }:
                offenders.append(f"{path.name}:{node.lineno} calls {node.func.id}")  # type: ignore[attr-defined]
    assert not offenders, offenders
    assert len(list(CORE.rglob("*.py"))) >= 5
