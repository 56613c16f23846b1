"""The package's shape: imports go one way between layers, no import cycle, no module over 500
lines, and the code as ruff formats and lints it (when the dev extra's ruff is installed)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_film"

#: each top-level module or subpackage -> its layer; a module imports only from its own layer or lower
LAYERS = dict.fromkeys(["errors", "io", "quiet", "user_modules", "registry", "precision"], 0)
LAYERS |= {"checkpoints": 1} | dict.fromkeys(["<root>", "measure", "nn", "data", "metrics"], 2)
LAYERS |= {"quantization": 3, "models": 4, "export": 5, "callbacks": 6, "reproduce": 7}
LAYERS |= {"cli_messages": 8, "cli_inputs": 8, "cli": 9}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the lightning_film modules it imports at run time, at the top or inside functions
    alike (imports under ``if TYPE_CHECKING:`` are for annotations, and are left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found: set[str] = set()
        stack: list[ast.AST] = [ast.parse(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                stack.extend(node.orelse)
                continue
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found |= {n for n in names if n == "lightning_film" or n.startswith("lightning_film.")}
            stack.extend(ast.iter_child_nodes(node))
        graph[_module(path)] = found
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "<root>"]


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts = {"<root>" if p == "__init__" else p for p in parts if p != "__pycache__"}
    assert parts == set(LAYERS), "give each new top-level module or subpackage a layer here"


def test_imports_go_one_way():
    upward = [
        f"{a} -> {b}" for a, targets in _imports().items() for b in targets if _layer(b) > _layer(a) and b in _imports()
    ]
    assert not upward, f"imports from a higher layer: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> the nodes it reaches) as its path, or None (depth-first search)."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (cycle := visit(path + [nxt])):
                return cycle
        done.add(path[-1])
        return None

    return next((c for start in sorted(graph) if start not in done and (c := visit([start]))), None)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    imports = _imports()
    # a module's edge to its own package (``a.b.c`` -> ``a.b``) is how Python finds a submodule, not a
    # dependency; the package's __init__ re-exporting the module is the real edge
    graph = {a: {b for b in bs if b in imports and b != a and not a.startswith(b + ".")} for a, bs in imports.items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_modules_stay_under_500_lines():
    modules = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these modules: {long}"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff comes with the dev extra")
@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
