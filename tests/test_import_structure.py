"""How the packages import each other, read from the source (AST only; nothing is imported).

- No import cycle among the modules of ``keras_gates``, ``keras_gates.export`` and
  ``keras_gates.serving``: none among the imports that run at import time, and none either when
  function-local and ``if TYPE_CHECKING:`` imports count too.
- ``keras_gates.serving`` never imports ``keras_gates.export`` (the contract it needs is
  ``keras_gates.signature``).
- No module imports another's private name (``from m import _name``) or reads one through a
  module alias (``m._name``). ``keras_gates._internals`` is the one sanctioned *module* with a
  leading underscore: it is where private Keras/TensorFlow API lives (tests/test_private_api.py).
- ``export/exporter.py`` orchestrates the export stages and imports everything at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # package -> its directory (pyproject.toml [tool.setuptools.package-dir])
    "keras_gates": ROOT / "keras_gates",
    "keras_gates.export": ROOT / "export",
    "keras_gates.serving": ROOT / "serving",
}
SANCTIONED_PRIVATE_MODULES = {"keras_gates._internals"}
# ``obj._name`` outside ``self``/``cls``: only _internals (private Keras API) and these.
PRIVATE_ATTRIBUTES_ALLOWED = {
    ("keras_gates.cli", "args._run"),  # the argparse default this module sets itself
}


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the three packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` reads from, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, where: str = "any") -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements by where they sit: ``module`` (they run when the module is imported),
    ``function`` (inside a function), ``typing`` (under ``if TYPE_CHECKING:``) or ``any``."""

    def walk(node: ast.AST, place: str) -> Iterator[ast.Import | ast.ImportFrom]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if where in ("any", place):
                    yield child
            elif isinstance(child, ast.If) and _is_type_checking(child) and place == "module":
                yield from walk(child, "typing")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, "function")
            else:
                yield from walk(child, place)

    return walk(tree, "module")


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """``(project module, imported name or None)`` for each project import in ``node``."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name in MODULES]
    source = _absolute(module, node)
    if source not in MODULES:
        return []
    result = []
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        result.append((submodule, None) if submodule in MODULES else (source, alias.name))
    return result


def _edges(module: str, where: str = "module") -> set[str]:
    tree = TREES[module]
    return {
        target
        for node in _imports(tree, where)
        for target, _ in _targets(module, node)
        if target != module and not module.startswith(f"{target}.")  # its own package
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a path whose last module imports its first), or ``None``."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_module_list_covers_the_packages():
    assert {"keras_gates.export.exporter", "keras_gates.serving.server"} <= set(MODULES)
    assert "keras_gates.inspect.trace" in MODULES


def test_no_import_cycle():
    graph = {module: _edges(module) for module in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join([*cycle, cycle[0]])


def test_no_import_cycle_through_function_local_imports_either():
    """A function-local import hides a cycle from Python, not from the reader (``validate``
    once imported ``padded`` inside a function while ``padded`` imported ``validate``)."""
    graph = {module: _edges(module, "any") for module in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join([*cycle, cycle[0]])


def test_serving_never_imports_the_exporter():
    offenders = []
    for module in MODULES:
        if not module.startswith("keras_gates.serving"):
            continue
        for node in _imports(TREES[module]):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [_absolute(module, node)]
            )
            offenders += [
                f"{module}:{node.lineno} imports {name}"
                for name in names
                if name == "keras_gates.export" or name.startswith("keras_gates.export.")
            ]
    assert not offenders, "\n".join(offenders)


def _module_aliases(module: str) -> dict[str, str]:
    """Local names bound to project modules anywhere in ``module`` (``import a.b as c``,
    ``from a import b`` where ``a.b`` is a module)."""
    aliases = {}
    for node in _imports(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
            continue
        source = _absolute(module, node)
        for alias in node.names:
            if f"{source}.{alias.name}" in MODULES:
                aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def _private_uses(module: str) -> list[str]:
    tree, found = TREES[module], []
    for node in _imports(tree):
        for target, name in _targets(module, node):
            if name is not None and _private(name):
                found.append(f"{module}:{node.lineno} imports {name} from {target}")
            elif name is None and _private(target.rsplit(".", 1)[-1]):
                if target not in SANCTIONED_PRIVATE_MODULES:
                    found.append(f"{module}:{node.lineno} imports the module {target}")
    aliases = _module_aliases(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in aliases:
                target = aliases[value.id]
                if target not in SANCTIONED_PRIVATE_MODULES and target != module:
                    found.append(f"{module}:{node.lineno} reads {value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    offenders = [line for module in MODULES for line in _private_uses(module)]
    assert not offenders, "\n".join(offenders)


def test_private_attributes_only_through_self():
    """``obj._name`` reads an object's internals from outside its class: only ``self``/``cls``
    may, and ``_internals.py`` (which reaches into Keras on purpose)."""
    offenders = []
    for module, tree in TREES.items():
        if module in SANCTIONED_PRIVATE_MODULES:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (module, ast.unparse(node)) not in PRIVATE_ATTRIBUTES_ALLOWED:
                offenders.append(f"{module}:{node.lineno} reads {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)


def test_exporter_imports_at_the_top():
    module = "keras_gates.export.exporter"
    local = [
        f"line {node.lineno}: {ast.unparse(node)}" for node in _imports(TREES[module], "function")
    ]
    assert not local, "function-local imports in export/exporter.py:\n" + "\n".join(local)
