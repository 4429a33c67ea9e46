"""Imports go one way: the package's import graph, read from the source, has no cycle and no upward edge.

Every ``import`` and ``from ... import`` in ``recbole_cmi/`` counts, those inside functions included (a
function-level import is still a dependency; it only hides a cycle until the function runs). Imports by name
(``importlib.import_module`` of a verb's or a model's module) are not edges: they are looked up at run time by
the layer that names them. ARCHITECTURE.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "recbole_cmi"

# Bottom-up. A module may import from its own layer or a lower one, never from a higher one. The longest
# matching name wins (recbole_cmi.data.synthetic -> recbole_cmi.data).
LAYERS = {
    # 0 helpers: errors, files, compatibility patches, option vocabulary, the command-line vocabulary, progress
    # output, and what every report uses: the machine description, the memory meter, markdown tables
    "recbole_cmi": 0,  # the package itself: applies compat on import
    "recbole_cmi.errors": 0,
    "recbole_cmi.paths": 0,
    "recbole_cmi.files": 0,
    "recbole_cmi.machine": 0,
    "recbole_cmi.memory": 0,
    "recbole_cmi.markdown": 0,
    "recbole_cmi.compat": 0,
    "recbole_cmi.options": 0,
    "recbole_cmi.cli": 0,
    "recbole_cmi.progress": 0,
    "recbole_cmi.optim": 0,
    # 1 model lookup
    "recbole_cmi.utils": 1,
    # 2 config, data, models, and what they use: retrieval settings, the checkpoint format, process groups
    "recbole_cmi.config": 2,
    "recbole_cmi.config_yaml": 2,
    "recbole_cmi.config_keys": 2,
    "recbole_cmi.data": 2,
    "recbole_cmi.model": 2,
    "recbole_cmi.retrieval": 2,
    "recbole_cmi.checkpoint": 2,
    "recbole_cmi.distributed": 2,
    # 3 the trainer and its checkpoints
    "recbole_cmi.trainer": 3,
    "recbole_cmi.trainer_checkpoint": 3,
    # 4 the pipeline builder, and the runner with its multi-process launcher
    "recbole_cmi.pipeline": 4,
    "recbole_cmi.quick_start": 4,
    # 5 applications
    "recbole_cmi.tune": 5,
    "recbole_cmi.tools": 5,
    "recbole_cmi.benchmark": 5,
    "recbole_cmi.export": 5,
    # 6 the front door
    "recbole_cmi.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = ["recbole_cmi", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in path.parts}


def imports_of(path: Path, modules) -> list[tuple[str, int]]:
    """``(imported package module, line)`` for every import statement of ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # from recbole_cmi import options -> the submodule; from recbole_cmi.cli import run_cli -> cli
            names = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
            names = names or [node.module]
        else:
            continue
        found += [(name, node.lineno) for name in names if name.split(".")[0] == "recbole_cmi"]
    return found


def layer_of(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise KeyError(module)


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        edges = {}
        for target, line in imports_of(path, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search over the modules)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_layer():
    missing = []
    for name in package_modules():
        try:
            layer_of(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"add these modules to LAYERS in tests/test_imports.py (and ARCHITECTURE.md): {missing}"


def test_no_import_goes_up_a_layer():
    graph = import_graph()
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)}) at line {line}"
        for source, edges in graph.items()
        for target, line in edges.items()
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
        + f" -> {cycle[-1]}"
    )


def test_the_graph_reader_sees_function_level_imports_and_names_cycles(tmp_path):
    source = tmp_path / "recbole_cmi" / "config.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from recbole_cmi.trainer import Trainer\n    from recbole_cmi import cli\n")
    modules = {"recbole_cmi.trainer": None, "recbole_cmi.cli": None}
    assert imports_of(source, modules) == [("recbole_cmi.trainer", 2), ("recbole_cmi.cli", 3)]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None


@pytest.mark.parametrize(
    "module",
    [
        "recbole_cmi.config",
        "recbole_cmi.pipeline",
        "recbole_cmi.quick_start",
        "recbole_cmi.trainer",
        "recbole_cmi.trainer_checkpoint",
    ],
)
def test_config_keeps_its_import_path_and_the_core_stays_below_the_applications(module):
    # recbole_cmi.config.Config is pickled into old checkpoints: it must stay where it is.
    assert "recbole_cmi.config" in package_modules()
    graph = import_graph()
    assert all(layer_of(target) < 5 for target in graph[module]), graph[module]
