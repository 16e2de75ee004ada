"""pipeline.layout is the one map of which stage writes which file: dvc.yaml declares exactly its outs, metrics
and plots, and no stage module imports another (shared helpers live outside pipeline/stages)."""

import ast
import re

import pytest
import yaml

from pipeline.layout import OUT, PER_ITEM, STAGES, Layout

from .pipeline_util import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SHEET = "a_sheet"  # study.sheets is empty by default: its templates are expanded for a made-up sheet


def _items(stage: str) -> list[str | None]:
    """What dvc.yaml's foreach expands to under the default params.yaml (None: not a foreach stage)."""
    if stage not in PER_ITEM:
        return [None]
    return [SHEET] if stage == "study" else list(PARAMS["attributes"])


def _expand(entries: list, item: str | None) -> set[str]:
    """dvc.yaml out entries (a path, or {path: options}) with ${item} / ${key} filled in."""
    paths = [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]
    return {re.sub(r"\$\{(item|key)\}", str(item), p) for p in paths}


def _declared(stage: str, item: str | None) -> dict[str, set[str]]:
    """dvc.yaml's outs split into cached outs and uncached records; metrics and plots (all uncached)."""
    body = DVC["stages"][stage]
    body = body.get("do", body)
    outs = body.get("outs") or []
    uncached = [e for e in outs if isinstance(e, dict) and next(iter(e.values())).get("cache") is False]
    declared = {
        "outs": _expand([e for e in outs if not any(e is u for u in uncached)], item),
        "records": _expand(uncached, item),
    }
    metrics = body.get("metrics") or []
    assert all(isinstance(e, dict) and next(iter(e.values())).get("cache") is False for e in metrics), (
        f"{stage}: every metrics file is cache: false (small, committed)"
    )
    declared["metrics"], declared["plots"] = _expand(metrics, item), _expand(body.get("plots"), item)
    return declared


def _layout(stage: str, item: str | None) -> dict[str, set[str]]:
    s = Layout(OUT).stage(stage, item)
    return {kind: {p.as_posix() for p in getattr(s, kind)} for kind in ("outs", "records", "metrics", "plots")}


def test_every_dvc_stage_is_a_layout_stage():
    assert list(DVC["stages"]) == list(STAGES)
    assert {s for s, body in DVC["stages"].items() if "foreach" in body} == set(PER_ITEM)
    assert PARAMS["attributes"], "the default params name attributes: the foreach stages are compared"


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_declares_what_the_layout_says(stage):
    for item in _items(stage):
        assert _declared(stage, item) == _layout(stage, item), f"dvc.yaml stage {stage}@{item} vs pipeline.layout"


def test_dvc_top_level_plots_show_files_a_stage_writes():
    sched = Layout(OUT).schedule
    written = {p.as_posix() for p in sched.outs + sched.plots}
    shown = set()
    for entry in DVC.get("plots", []):
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        shown |= set((spec or {}).get("y", {name: None}))
    assert shown and shown <= written


def test_stage_lookup_refuses_what_is_not_a_stage():
    lay = Layout("somewhere")
    assert lay.stage("train", "red") == lay.train("red")
    assert lay.stage("report") is lay.report
    for bad in (("toy_eval", None), ("train", None), ("report", "red")):
        with pytest.raises(ValueError):
            lay.stage(*bad)


def _imported_modules(path) -> set[str]:
    """Absolute names of every module ``path`` imports (also inside functions), relative imports resolved."""
    package = "pipeline.stages"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # from . import train
    return names


def test_no_stage_imports_another_stage():
    folder = ROOT / "pipeline" / "stages"
    stages = {f"pipeline.stages.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    assert {f"pipeline.stages.{s}" for s in STAGES} == stages, "one module per stage, and no other module there"
    crossing = {
        p.stem: sorted((_imported_modules(p) & stages) - {f"pipeline.stages.{p.stem}"}) for p in folder.glob("*.py")
    }
    assert not {k: v for k, v in crossing.items() if v}, "shared helpers belong in pipeline/ (common, toy, layout)"


def test_import_walk_sees_relative_stage_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from .train import a\nfrom . import edit\ndef g():\n    from ..stages.schedule import b\n")
    assert {"pipeline.stages.train", "pipeline.stages.edit", "pipeline.stages.schedule"} <= _imported_modules(f)
