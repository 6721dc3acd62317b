"""The layering of docs/architecture.md holds: each module imports only its own or lower layers, with no circles
(type-only and function-local imports included), imports sit at the top unless marked ``# lazy: <reason>``, and no
module outgrows ~500 lines."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sora2_provider"

#: Longest matching prefix wins. 1: values and rules; 2: the wire, stores and the emulator; 3: deciding and
#: waiting; 4: what DAG authors and the api-server load.
LAYERS = {
    "models": 1,
    "exceptions": 1,
    "compat": 1,
    "_arguments": 1,
    "_http_range": 1,
    "_writers": 1,
    "metrics": 1,
    "spend": 1,
    "xcom": 1,
    "links": 1,
    "get_provider_info": 1,
    "job_events": 1,
    "storage": 2,
    "state": 2,
    "lineage": 2,
    "hooks": 2,
    "testing": 2,
    "triggers": 3,
    "operators": 4,
    "operators._failures": 3,
    "operators._job_spec": 3,
    "operators._output": 3,
    "operators._pay_once": 3,
    "operators._waiting": 3,
    "operators.sora2": 4,
    "sensors": 4,
    "plugins": 4,
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if module_name(p)}


def layer_of(name: str) -> int | None:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imported_modules(name: str) -> set[str]:
    """The package's own modules ``name`` imports anywhere in its file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for target in targets:
            if target.startswith("sora2_provider."):
                own = target.removeprefix("sora2_provider.")
                while own and own not in MODULES:
                    own = own.rpartition(".")[0]
                if own and own != name:
                    found.add(own)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def test_every_module_has_a_layer():
    assert [name for name in MODULES if layer_of(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_layer(name):
    upward = [dep for dep in GRAPH[name] if (layer_of(dep) or 0) > (layer_of(name) or 0)]
    assert upward == [], f"{name} (layer {layer_of(name)}) imports upward: {upward}"


def test_no_import_circles():
    graphlib.TopologicalSorter(GRAPH).prepare()  # raises CycleError naming the circle


def test_function_local_imports_are_marked_lazy_with_a_reason():
    unmarked = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for func in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = lines[node.lineno - 1] + lines[node.lineno - 2]
                    if "# lazy: " not in here:
                        unmarked.append(f"{name}:{node.lineno}")
    assert unmarked == []


def test_modules_stay_small():
    assert {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES} == {}
