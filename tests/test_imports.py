"""The project's modules import each other without cycles, so no import has to hide inside a function.

The graph holds *module-level* imports (the module body, its ``if``/``try`` blocks and class bodies; not
function bodies, not ``if TYPE_CHECKING:``), read with ``ast`` from every module of asyrp, pipeline and flows.
An edge to an ancestor package of the importing module is left out: Python has started that package
before the module runs, so ``from . import offline`` in ``asyrp.models.diffusion`` is no cycle with
``asyrp/models/__init__.py``.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asyrp", "pipeline", "flows")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project packages."""
    found = {}
    for package in PACKAGES:
        for f in sorted((ROOT / package).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (function bodies and TYPE_CHECKING excluded)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
        elif isinstance(node, ast.ClassDef | ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return found


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """Dotted names ``node`` loads (``from pkg import sub`` loads pkg.sub when that is a module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return {base} | {f"{base}.{a.name}" for a in node.names}


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules its module-level imports load (ancestor packages left out)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            targets |= {t for t in imported(node, name, is_package) if t in modules}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_skip_functions_and_type_checking():
    tree = ast.parse(
        "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "def f():\n    import d\nclass K:\n    import e\ntry:\n    import g\nexcept ImportError:\n    import h\n"
    )
    assert sorted(n.names[0].name for n in module_level_imports(tree)) == ["a", "c", "e", "g", "h"]


def test_project_has_no_module_level_import_cycle():
    graph = import_graph()
    assert "asyrp.models.diffusion" in graph and "asyrp.models.errors" in graph["asyrp.models.clip"]
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_models_never_import_the_toy_world():
    """asyrp.models names its toy built-ins by string (asyrp.models.offline): loading CLIP loads no toy code."""
    code = "import sys, asyrp.models.clip; print(sorted(m for m in sys.modules if m.startswith('asyrp.toy')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert not any(t.startswith("asyrp.toy") for m, ts in import_graph().items() if m.startswith("asyrp.models")
                   for t in ts)  # fmt: skip
