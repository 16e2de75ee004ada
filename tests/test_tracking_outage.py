"""The MLflow queue under an outage (pipeline.tracking): jobs stay queued and are retried over time, not per
drainer run; `report` against a dead server returns in seconds and says what is left and how to retry; a torn
job.json is set aside while the rest drain; once the store is back every job is logged."""

import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipeline import common, tracking
from pipeline.params import params_from_dict

from .pipeline_util import free_port, plumbing_params, start, stop, tool_env, wait_http
from .test_tracking import STAGES, finished_pipeline, runs

BOUND_S = 60  # what a drain against a dead server may take at most (MLflow's own retries took 505 s)


@contextmanager
def within(seconds: float):
    """Fail the test (instead of hanging for minutes) when the block takes longer than ``seconds``."""

    def late(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def queued(out: Path) -> list[str]:
    return [tracking.job_where(j) for j in tracking._jobs(tracking.queue_dir(out))]


def given_up(out: Path) -> list[str]:
    return [tracking.job_where(j) for j in tracking._jobs(tracking.failed_dir(out))]


def job(out: Path, at: str) -> dict:
    (path,) = [j for j in tracking._jobs(tracking.queue_dir(out)) if tracking.job_where(j) == at]
    return json.loads((path / "job.json").read_text())


def queue_stages(params_text: str, out: Path, stages=STAGES[:-1]) -> None:
    """Every stage's logging queued as the stage CLIs queue it, each followed by its detached drainer's run."""
    params = params_from_dict(yaml.safe_load(params_text))
    for entry in stages:
        stage, _, attribute = entry.partition("@")
        common.track(params, stage, attribute or None, out, params_text)
        tracking.drain(out, quiet=True, due_only=True)


def report(params_text: str, out: Path) -> float:
    """`report`'s tracking (queue its job, drain everything); returns the seconds it took."""
    start_s = time.monotonic()
    common.track(params_from_dict(yaml.safe_load(params_text)), "report", None, out, params_text)
    return time.monotonic() - start_s


def assert_all_logged(uri: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert queued(out) == [] and given_up(out) == []
    assert {n: s[0] for n, s in runs(uri).items()} == {n: "FINISHED" for n in ("reproduce-offline", "red", "blue")}
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.get_experiment_by_name("asyrp-offline")
    (red,) = c.search_runs([exp.experiment_id], "tags.`asyrp.attribute` = 'red'")
    assert red.data.params["t_edit"] == "500" and "train.loss_final" in red.data.metrics
    assert c.get_model_version_by_alias("asyrp-offline-red", "candidate").run_id == red.info.run_id


@pytest.fixture
def params_text() -> str:
    return yaml.safe_dump(plumbing_params())


@pytest.fixture
def dead(monkeypatch) -> str:
    """A tracking URI nothing listens on (a closed port); stages' detached drainers run in the test instead."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "spawn_drain", lambda out: None)
    return uri


def test_an_outage_keeps_jobs_queued_report_returns_and_all_log_when_the_store_is_back(
    tmp_path, monkeypatch, params_text, dead, capsys
):
    out = tmp_path / "out"
    finished_pipeline(out)
    with within(BOUND_S):
        queue_stages(params_text, out)
        for _ in range(3):  # more drains than the 3 attempts after which a job used to be given up for good
            assert tracking.drain(out, quiet=True)
        seconds = report(params_text, out)
    assert seconds < 30, seconds
    assert queued(out) == list(STAGES) and given_up(out) == []  # all kept, none parked
    first = job(out, "download")
    assert first["attempts"] >= 4 and first["next_attempt"] > time.time() and "API request" in first["error"]
    line = capsys.readouterr().out.strip().splitlines()[-1]  # the last line of `dvc repro`, from report
    assert line.startswith("mlflow: 10 still queued (download, invert, schedule, train@red") and dead in line
    assert f"retry with `python -m pipeline.tracking drain --retry-failed --out {out}`" in line

    # a job still failing when its time budget is spent is given up (failed/); the line says so
    monkeypatch.setenv("ASYRP_MLFLOW_RETRY_HOURS", "0")
    (failure,) = tracking.drain(out, quiet=True)
    assert failure.startswith("download: ") and "gave up after 0 h" in failure and given_up(out) == ["download"]
    assert "9 still queued" in tracking.pending_line(out) and "1 failed (download)" in tracking.pending_line(out)
    monkeypatch.delenv("ASYRP_MLFLOW_RETRY_HOURS")

    # the store is back: one command logs the failed job and the queue, in order
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("ASYRP_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    with pytest.raises(SystemExit) as exit_:
        tracking.main(["drain", "--retry-failed", "--out", str(out)])
    assert exit_.value.code == 0
    assert "mlflow: every queued stage is logged" in capsys.readouterr().out
    assert_all_logged(store, out)


def test_background_drainers_wait_for_a_jobs_next_attempt(tmp_path, params_text, dead):
    """A stage's detached drainer does not retry a job before its next attempt (nor log later jobs before it)."""
    out = tmp_path / "out"
    finished_pipeline(out)
    queue_stages(params_text, out, ("schedule", "train@red"))  # schedule's drainer failed; train's waited
    assert job(out, "schedule")["attempts"] == 1 and job(out, "train@red")["attempts"] == 0
    assert tracking.drain(out, due_only=True) == []  # nothing due: no attempt
    assert job(out, "schedule")["attempts"] == 1
    assert len(tracking.drain(out)) == 1  # the CLI's and report's drain try now, and stop at a dead server
    assert job(out, "schedule")["attempts"] == 2 and job(out, "train@red")["attempts"] == 0


def test_a_torn_job_is_set_aside_while_the_rest_drain(tmp_path, monkeypatch, params_text):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ASYRP_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    params, out = params_from_dict(yaml.safe_load(params_text)), tmp_path / "out"
    finished_pipeline(out)
    jobs = [tracking.enqueue(params_text, s, a, out, params) for s, a in (("schedule", None), ("train", "red"))]
    torn = jobs[0] / "job.json"
    torn.write_text(torn.read_text()[:40])  # what a crash mid-write used to leave
    (failure,) = tracking.drain(out, quiet=True)
    assert failure.startswith("schedule: unreadable job.json (JSONDecodeError")
    assert queued(out) == [] and given_up(out) == ["schedule"]
    kept = tracking.failed_dir(out) / jobs[0].name
    assert "JSONDecodeError" in (kept / "error.txt").read_text() and (kept / "out").is_dir()  # nothing lost
    assert runs(uri)["red"][0] == "FINISHED"  # the job after it was logged


def test_a_crash_while_recording_a_failed_attempt_leaves_the_job_whole(tmp_path, monkeypatch, params_text):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    params, out = params_from_dict(yaml.safe_load(params_text)), tmp_path / "out"
    finished_pipeline(out)
    job_dir = tracking.enqueue(params_text, "schedule", None, out, params)
    before = json.loads((job_dir / "job.json").read_text())
    write = Path.write_text

    def crash(self, data, *args, **kwargs):  # the disk fills up halfway through a write
        write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(OSError):
        tracking.drain(out, quiet=True)
    monkeypatch.undo()
    assert json.loads((job_dir / "job.json").read_text()) == before  # the old job.json, whole


@pytest.mark.slow
def test_a_real_server_down_then_up(tmp_path, monkeypatch, params_text, dead):
    """The outage against a real `mlflow server`: nothing on the port first, the server on it later."""
    out = tmp_path / "out"
    finished_pipeline(out)
    with within(BOUND_S):
        queue_stages(params_text, out)
        assert report(params_text, out) < 30
    assert queued(out) == list(STAGES)
    port = dead.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--default-artifact-root", str(tmp_path / "artifacts")]  # fmt: skip
    server = start(cmd, tool_env(), tmp_path / "mlflow.log")
    try:
        wait_http(f"{dead}/health", 120, server)
        with pytest.raises(SystemExit) as exit_:
            tracking.main(["drain", "--retry-failed", "--out", str(out)])
        assert exit_.value.code == 0
        assert_all_logged(dead, out)
    finally:
        stop(server)
