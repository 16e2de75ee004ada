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
    """Retried over time, not per drainer run: given up only when it still fails once its time budget is spent."""
    params = params_from_dict(yaml.safe_load(params_text))
    out = tmp_path / "out"
    finished_schedule(out, 224)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    job = tracking.enqueue(params_text, "schedule", None, out, params)
    for attempt in range(1, 5):
        (failed,) = tracking.drain(out, quiet=True)
        assert failed.startswith("schedule: ") and f"(attempt {attempt}; retried from" in failed
    assert job.exists()
    monkeypatch.setenv("ASYRP_MLFLOW_RETRY_HOURS", "0")
    (failed,) = tracking.drain(out, quiet=True)
    assert "(attempt 5; gave up after 0 h" in failed and not job.exists()
    kept = tmp_path / "out" / ".tracking" / "failed" / job.name
    assert json.loads((kept / "job.json").read_text())["attempts"] == 5
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
    for f, _ in what.timings:  # wall-clock figures: logged, but never a DVC-tracked file (they differ per run)
        assert f == outputs.timings_json and not any(f == d or d in f.parents for d in declared)
        assert f.name in (Path(__file__).parents[1] / ".dvcignore").read_text().split()  # nor hashed in a dep folder


# ------------------------------------------------------------------------------------------ run status
STAGES = ("download", "invert", "schedule", "train@red", "edit@red", "evaluate@red", "train@blue", "edit@blue",
          "evaluate@blue", "report")  # fmt: skip


def finished_pipeline(out: Path) -> None:
    """What a finished tiny pipeline (red, blue) leaves for tracking, stage by stage (see tracking.LOGGED)."""
    finished_schedule(out, 224)
    lay = Layout(out)
    lay.invert.metrics_json.parent.mkdir(parents=True, exist_ok=True)
    lay.invert.metrics_json.write_text(json.dumps({"n_train": 4, "recon_l1_255": 1.5}))
    for a in ("red", "blue"):
        t, e, v = lay.train(a), lay.edit(a), lay.evaluate(a)
        for folder in (t.metrics_json.parent, e.grid.parent, v.metrics_json.parent, v.oracle.metrics_json.parent):
            folder.mkdir(parents=True, exist_ok=True)
        t.metrics_json.write_text(json.dumps({"loss_final": 0.5}))
        t.schedule_json.write_text(json.dumps({"t_edit": 500, "t_boost": 200}))
        t.loss_csv.write_text("step,loss,clip,recon\n0,1.0,0.9,0.1\n1,0.5,0.4,0.1\n")
        t.direction_config.write_text(json.dumps({"train": {"lambda_recon": 0.1}}))
        t.direction_weights.write_bytes(b"weights")
        for png in (t.loss_png, e.grid, e.strip):
            Image.new("RGB", (8, 8), (10, 10, 200)).save(png)
        v.metrics_json.write_text(json.dumps({"s_dir": {"mean": 0.2, "ci95": 0.01}}))
        v.oracle.metrics_json.write_text(json.dumps({"skipped": "not a toy profile"}))


def runs(uri: str) -> dict:
    """Every run of the experiment, by run name: (status, end time, asyrp.error tag)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("asyrp-offline")
    found = c.search_runs([exp.experiment_id]) if exp else []
    return {r.info.run_name: (r.info.status, r.info.end_time, r.data.tags.get("asyrp.error")) for r in found}


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ASYRP_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    monkeypatch.setattr(tracking, "spawn_drain", lambda out: None)  # queued jobs wait for report's drain
    return uri


@pytest.mark.parametrize("queued", [True, False], ids=["queued", "in-process"])
def test_every_run_ends_finished_when_the_reproduction_ends(tmp_path, monkeypatch, params_text, store, queued):
    """Each stage's logging as a finished stage does it (common.track): attribute runs end FINISHED with their
    stages, the parent when report has logged (queued: drained) everything."""
    monkeypatch.setenv("ASYRP_MLFLOW_ASYNC", "1" if queued else "0")
    params, out = params_from_dict(yaml.safe_load(params_text)), tmp_path / "out"
    finished_pipeline(out)
    for entry in STAGES[:6]:
        stage, _, attribute = entry.partition("@")
        common.track(params, stage, attribute or None, out, params_text)
    if not queued:  # in process: red's run is over when its last stage is; the reproduction's is not
        status = runs(store)
        assert status["red"][0] == "FINISHED" and status["red"][1] and status["reproduce-offline"][0] == "RUNNING"
    for entry in STAGES[6:]:
        stage, _, attribute = entry.partition("@")
        common.track(params, stage, attribute or None, out, params_text)
    status = runs(store)
    assert set(status) == {"reproduce-offline", "red", "blue"}
    for name, (state, end, error) in status.items():
        assert state == "FINISHED" and end and error is None, (name, status)
    assert not [p for p in tracking.queue_dir(out).iterdir() if not p.name.startswith(".")] if queued else True


def failing_evaluate(tmp_path: Path, params_text: str, capsys) -> tuple[Path, str]:
    """`evaluate red` run as DVC runs it, before anything was edited: it fails (exit 2, one line)."""
    from pipeline.stages import evaluate

    out, path = tmp_path / "out", tmp_path / "params.yaml"
    path.write_text(params_text)
    finished_schedule(out, 224)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["red", "--params", str(path), "--out", str(out)])
    err = capsys.readouterr().err  # MLflow's own notes or a tracking warning may come first
    *_, line, hint = err.splitlines()
    assert exit_.value.code == 2 and line.startswith("error: ") and "Traceback" not in err, err
    assert hint == "(set ASYRP_DEBUG=1 to see the traceback)"
    return out, err


@pytest.mark.parametrize("queued", [True, False], ids=["queued", "in-process"])
def test_a_failing_stage_ends_its_run_and_the_parent_failed(tmp_path, monkeypatch, params_text, store, queued, capsys):
    monkeypatch.setenv("ASYRP_MLFLOW_ASYNC", "1" if queued else "0")
    monkeypatch.delenv("ASYRP_DEBUG", raising=False)
    out, _ = failing_evaluate(tmp_path, params_text, capsys)
    status = runs(store)  # queued: the failed stage drained its mark at once (nothing else would)
    assert status["red"][0] == "FAILED" and status["red"][1], status
    assert status["red"][2].startswith("FileNotFoundError: ") and "summary.json" in status["red"][2]
    assert status["reproduce-offline"][0] == "FAILED" and status["reproduce-offline"][2].startswith("evaluate@red: ")

    # the fixed rerun: red's run ends FINISHED again, without the error; the parent with report
    params = params_from_dict(yaml.safe_load(params_text))
    finished_pipeline(out)
    for entry in STAGES[3:]:
        stage, _, attribute = entry.partition("@")
        common.track(params, stage, attribute or None, out, params_text)
    assert {name: (s[0], s[2]) for name, s in runs(store).items()} == {
        n: ("FINISHED", None) for n in ("reproduce-offline", "red", "blue")
    }


def test_logging_a_failure_never_fails_the_stage_further(tmp_path, monkeypatch, params_text, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    monkeypatch.setenv("ASYRP_MLFLOW_ASYNC", "0")
    monkeypatch.delenv("ASYRP_DEBUG", raising=False)
    _, err = failing_evaluate(tmp_path, params_text, capsys)  # exit 2, its error the last line, as without tracking
    assert "warning: MLflow logging of evaluate@red's failure failed" in err


def test_prefect_tasks_and_flows_end_their_runs(tmp_path, params_text, store):
    """The flows' tracking (flows.tasks._tracked around a stage's run, flows._reproduction around the stages):
    FINISHED as in DVC, FAILED when a stage raises, the parent FINISHED by report or at the flow's end."""
    from flows.flows import _reproduction
    from flows.tasks import _tracked

    params_json = json.dumps(yaml.safe_load(params_text))
    params, out = params_from_dict(json.loads(params_json)), tmp_path / "out"
    key = tracking.reproduction_key(params)
    finished_pipeline(out)
    done = lambda p, *a, out: {}  # noqa: E731 - a stage's run that wrote what finished_pipeline wrote
    with _reproduction(params_json, key, finish=False):
        for stage in ("train", "edit", "evaluate"):
            assert _tracked(stage, done, params_json, str(out), "red", key)["mlflow_run_id"]
        assert runs(store)["reproduce-offline"][0] == "RUNNING" and runs(store)["red"][0] == "FINISHED"
        _tracked("report", done, params_json, str(out), None, key)
    assert {n: s[0] for n, s in runs(store).items()} == {"reproduce-offline": "FINISHED", "red": "FINISHED"}

    def broken(p, attribute, out):
        raise RuntimeError("the GPU fell over")

    with pytest.raises(RuntimeError), _reproduction(params_json, key, finish=True):
        _tracked("edit", broken, params_json, str(out), "blue", key)
    status = runs(store)
    assert status["blue"][:1] == ("FAILED",) and status["blue"][2] == "RuntimeError: the GPU fell over"
    assert status["reproduce-offline"][0] == "FAILED"
    assert status["reproduce-offline"][2] == "edit@blue: RuntimeError: the GPU fell over"  # the stage's mark kept
    with _reproduction(params_json, key, finish=True):  # a flow without report (new-attribute) ends it itself
        _tracked("edit", done, params_json, str(out), "blue", key)
    assert {n: s[:1] + s[2:] for n, s in runs(store).items()} == {
        n: ("FINISHED", None) for n in ("reproduce-offline", "red", "blue")
    }
