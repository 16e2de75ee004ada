"""Queued MLflow logging of stage runs (pipeline.tracking): a queued job logs what the stage wrote when it
finished, exactly as logging in the stage process would, and a failing job is kept, retried, then set aside."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import common, tracking
from pipeline.layout import PER_ITEM, Layout
from pipeline.params import params_from_dict

from .pipeline_util import plumbing_params


def finished_schedule(out: Path, t_boost: int) -> None:
    """What a finished `schedule` stage leaves for tracking: its metrics and plot, and the data manifest."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "data" / "manifest.csv").write_text("id,sha256\n00000,abc\n")
    (out / "schedule").mkdir(parents=True, exist_ok=True)
    (out / "schedule" / "metrics.json").write_text(json.dumps({"t_boost": t_boost, "t_edit_max": 755}))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out / "schedule" / "curves.png")


def logged(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("asyrp-offline")
    (run,) = c.search_runs([exp.experiment_id])
    artifacts = [a.path for a in c.list_artifacts(run.info.run_id, "schedule")]
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("asyrp.") or k == "git_commit"}
    return {"metrics": run.data.metrics, "tags": tags, "artifacts": artifacts}


@pytest.fixture
def params_text() -> str:
    return yaml.safe_dump(plumbing_params())


def test_queued_job_logs_what_the_stage_wrote_like_in_process(tmp_path, monkeypatch, params_text, capsys):
    params = params_from_dict(yaml.safe_load(params_text))
    queued, direct = tmp_path / "queued", tmp_path / "direct"
    monkeypatch.setenv("ASYRP_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'queued.db'}")
    monkeypatch.setenv("ASYRP_MLFLOW_ASYNC", "1")
    finished_schedule(queued, 224)
    common.track(params, "schedule", None, queued, params_text)
    assert "mlflow: queued schedule" in capsys.readouterr().out
    finished_schedule(queued, 1)  # a later change to the outputs: the job logs the copy taken at the end
    assert tracking.drain(queued) == []  # waits for the drainer that track started, then logs what is left
    assert not list(tracking.queue_dir(queued).iterdir()) or all(
        p.name.startswith(".") for p in tracking.queue_dir(queued).iterdir()
    )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'direct.db'}")
    monkeypatch.setenv("ASYRP_MLFLOW_ASYNC", "0")
    finished_schedule(direct, 224)
    common.track(params, "schedule", None, direct, params_text)
    assert "mlflow: logged schedule" in capsys.readouterr().out

    a, b = logged(f"sqlite:///{tmp_path / 'queued.db'}"), logged(f"sqlite:///{tmp_path / 'direct.db'}")
    assert a["metrics"]["schedule.t_boost"] == 224 and a["tags"]["asyrp.stage.schedule"] == "done"
    assert a == b


def test_failing_job_is_kept_retried_then_set_aside(tmp_path, monkeypatch, params_text):
    params = params_from_dict(yaml.safe_load(params_text))
    out = tmp_path / "out"
    finished_schedule(out, 224)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    job = tracking.enqueue(params_text, "schedule", None, out, params)
    for attempt in range(1, tracking.MAX_ATTEMPTS + 1):
        (failed,) = tracking.drain(out, quiet=True)
        assert failed.startswith("schedule: ") and f"attempt {attempt} of" in failed
    assert not job.exists()
    kept = tmp_path / "out" / ".tracking" / "failed" / job.name
    assert json.loads((kept / "job.json").read_text())["attempts"] == tracking.MAX_ATTEMPTS
    assert (kept / "out" / "schedule" / "metrics.json").exists()  # nothing lost: the copy is still there
    with pytest.raises(SystemExit) as exit_:
        tracking.main(["drain", "--out", str(out)])
    assert exit_.value.code == 1  # the CLI says something was given up on


@pytest.mark.parametrize("stage", sorted(tracking.LOGGED))
def test_what_is_logged_and_queued_is_what_the_stage_declares(stage):
    """Every file tracking logs for a stage (and so queues) is one that stage writes per pipeline.layout: a DVC
    out, record, metric or plot of it, or inside an out folder (the optional oracle grid: toy profiles only)."""
    lay = Layout("outputs")
    item = "red" if stage in PER_ITEM else None
    outputs = lay.stage(stage, item)
    declared = outputs.outs + outputs.records + outputs.metrics + outputs.plots
    what = tracking.logged(stage, item, lay)
    assert what.files(), f"{stage} is in the table but logs nothing"
    for f in [f for f, _ in what.metrics + what.artifacts] + list(what.reads):
        assert any(f == d or d in f.parents for d in declared), f"{stage} logs {f}, which it does not declare"
    # logged as MLflow metrics: the stage's full metrics files (DVC shows their headline.json)
    assert {f for f, _ in what.metrics} <= set(outputs.records)
    assert tracking.stage_files(stage, item, lay) == [lay.download.manifest, *what.files()]
    for f, _ in what.optional:
        assert f.parent == lay.evaluate("red").oracle.folder  # the only file a profile may not write
