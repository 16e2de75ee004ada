"""Every project file a DVC stage imports is one of its deps, so a code change always reruns the stage.

The imports are read with ``ast`` (module-level and function-level, relative and absolute) from the stage's
module, ``python -m pipeline.stages.<s>`` in its ``cmd``, and followed transitively through the project
packages. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so those count too.
A dep folder covers every file below it; data deps (outputs/...) and templated ones (``${...}``) cover no code.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asyrp", "pipeline", "flows")


def stages() -> dict[str, dict]:
    """Stage name -> its definition (the ``do`` of a foreach stage)."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in raw.items()}


def module_file(module: str) -> Path | None:
    """The file of a project module (``a.b`` -> a/b.py or a/b/__init__.py); None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Dotted names of every module an import statement anywhere in ``path`` (module ``module``) may load."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return found


def with_parents(module: str) -> list[str]:
    """``a.b.c`` -> [a, a.b, a.b.c]: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_files(module: str) -> set[Path]:
    """Every project file that running ``module`` imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        for m in with_parents(name):
            f = module_file(m)
            if f is None or m in seen:
                continue
            seen[m] = f
            todo.extend(imported_modules(f, m))
    return set(seen.values())


def code_deps(stage: dict) -> list[str]:
    """The stage's deps that are project files or folders (not outputs/..., not templated)."""
    deps = stage.get("deps", [])
    return [d.rstrip("/") for d in deps if "${" not in d and not d.startswith("outputs/")]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d + "/") for d in deps)


def stage_module(stage: dict) -> str:
    m = re.search(r"python -m (pipeline\.stages\.\w+)", stage["cmd"])
    assert m, f"cmd {stage['cmd']!r} does not run a pipeline.stages module"
    return m.group(1)


def test_import_walk_follows_relative_and_function_level_imports():
    """The walk itself: edit@'s module reaches the method through asyrp's __init__ and relative imports."""
    files = {f.relative_to(ROOT).as_posix() for f in imported_files("pipeline.stages.edit")}
    assert {"pipeline/stages/edit.py", "pipeline/__init__.py", "asyrp/__init__.py", "asyrp/core/ddim.py"} <= files
    assert "asyrp/core/hspace.py" in files  # reached through relative imports (from .hspace, ..core.hspace)
    assert not any(f.startswith(("tests/", ".venv/")) for f in files)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_its_imports(name):
    stage = stages()[name]
    deps = code_deps(stage)
    gone = [d for d in deps if not (ROOT / d).exists()]  # dvc repro fails on a dep that is not there
    assert not gone, f"dvc.yaml stage {name!r} depends on paths that do not exist: {gone}"
    missing = sorted(
        f.relative_to(ROOT).as_posix() for f in imported_files(stage_module(stage)) if not covered(f, deps)
    )
    assert not missing, f"dvc.yaml stage {name!r} imports files none of its deps covers: {missing}"


def test_shard_locks_are_not_part_of_the_latents_output(tmp_path):
    """Shard workers (Prefect, Dask) leave lock files inside outputs/latents/<split>: .dvcignore must hide them, or
    `dvc repro` after a Prefect run sees the latents changed and reruns every stage on identical data."""
    import fnmatch
    import os

    from asyrp.data import latents

    os.close(latents._lock(tmp_path, 3))
    left = [p.name for p in tmp_path.iterdir()]
    patterns = [line.strip() for line in (ROOT / ".dvcignore").read_text().splitlines() if line and line[0] != "#"]
    assert left, "the shard lock leaves a file behind (the case this test is about)"
    assert all(any(fnmatch.fnmatch(name, p) for p in patterns) for name in left), (left, patterns)
