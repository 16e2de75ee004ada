"""MLflow tracking of every stage run, from DVC and from Prefect alike (explicit ``MlflowClient`` calls
with run ids, never the fluent API: safe inside threaded tasks).

Layout in the tracking store (default ``sqlite:///<project>/mlflow.db``; ``MLFLOW_TRACKING_URI`` wins;
``ASYRP_MLFLOW=0`` turns tracking off):

    experiment  asyrp-<profile>
      parent run     one per reproduction (same params.yaml content + git commit), tag asyrp.reproduction
                     dataset-level stages (invert, schedule) log here
        child run    one per attribute: params (prompts, lambdas, t_edit, t_boost, steps, model id, data
                     version, git commit), metrics (loss per step, S_dir, LPIPS, SC), artifacts (grids, loss
                     and schedule plots, the direction) and tags (profile, attribute, stages)
    registered model asyrp-<profile>-<attribute>: a version per trained direction (safetensors + JSON, no
                     pickle); aliases ``candidate`` (the newest version) and ``champion`` (the first,
                     until a user moves it)

``load_registered_direction("models:/asyrp-<profile>-<attribute>@<alias>")`` gets it back.

Run status: runs are created RUNNING. A stage's logging ends its attribute run FINISHED (a later stage that logs
to the same run ends it again); the last stage, ``report``, ends the parent run FINISHED; a stage that raises
ends its run and the parent FAILED (KILLED when interrupted) with the error as tag ``asyrp.error``, which a
later FINISHED end (the rerun that worked) removes. Dataset-level stages leave the parent RUNNING.

Queued logging (stage CLIs, i.e. `dvc repro`; ``ASYRP_MLFLOW_ASYNC=0`` logs in the stage process instead):
importing MLflow and opening its store cost ~5 s, more than many stages' own work. So a finished stage copies
the few files it logs into ``<out>/.tracking/queue/<job>/`` and starts a detached ``python -m pipeline.tracking
drain``, which logs the queue in order under a file lock while the next stage starts. ``report`` drains the
queue before it finishes, so when `dvc repro` ends MLflow holds every stage; ``python -m pipeline.tracking
drain`` waits for and reports anything left. A stage that fails queues its FAILED mark the same way (in order
after what it follows) and drains at once.

When the store is down, a job stays queued: its attempts and next attempt time (backoff: 30 s, doubling, at most
an hour) are kept in its job.json, so later drains (the next stages', `report`'s, the CLI's) retry it; it moves to
``.tracking/failed/`` only when it still fails 24 h (``ASYRP_MLFLOW_RETRY_HOURS``) after it was queued, and
``python -m pipeline.tracking drain --retry-failed`` queues it again. A drain bounds MLflow's HTTP retries and
stops trying once the server does not answer, so `report` never waits minutes on a dead server; it ends with a
line on what is still queued or failed and the command that retries it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .io import OUT, Layout, read_csv, read_json, write_json
from .params import Params

ROOT = Path(__file__).resolve().parents[1]
TAG = "asyrp."
ERROR = TAG + "error"  # why a run is FAILED
LAST_STAGE = "report"  # its logging ends the reproduction's parent run
MAX_ERROR = 4000  # characters of an error kept as a tag (MLflow's tag values are bounded)


def enabled() -> bool:
    return os.environ.get("ASYRP_MLFLOW", "1").lower() not in ("0", "false", "no", "off")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_version(out: Path) -> str:
    """Content hash of the prepared dataset's manifest (the images' sha256s): changes iff the data does."""
    manifest = Layout(out).download.manifest
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else "none"


def reproduction_key(params: Params, commit: str | None = None) -> str:
    blob = params.model_dump_json().encode() + (commit or git_commit()).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def artifact_root() -> str | None:
    """Artifacts of a sqlite store live beside its database file (not in ./mlruns of whatever the cwd is)."""
    uri = tracking_uri()
    if os.environ.get("ASYRP_MLFLOW_ARTIFACTS"):
        return os.environ["ASYRP_MLFLOW_ARTIFACTS"]
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def experiment_id(c, profile: str) -> str:
    name = f"asyrp-{profile}"
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name, artifact_location=artifact_root())


def _find_or_create(c, exp_id: str, tags: dict, name: str, parent: str | None = None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([exp_id], filter_string=query, max_results=1)
    if runs:
        return runs[0].info.run_id
    all_tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
    return c.create_run(exp_id, tags=all_tags, run_name=name).info.run_id


def run_ids(params: Params, attribute: str | None = None, key: str | None = None) -> tuple[str, str | None]:
    """(parent run id, attribute run id or None) for this reproduction, created on first use."""
    c = client()
    exp = experiment_id(c, params.profile)
    key = key or reproduction_key(params)
    parent = _find_or_create(
        c, exp, {TAG + "reproduction": key, TAG + "level": "reproduction"}, f"reproduce-{params.profile}"
    )
    child = None
    if attribute is not None:
        child = _find_or_create(
            c, exp, {TAG + "reproduction": key, TAG + "attribute": attribute}, attribute, parent=parent
        )
    return parent, child


def _flat(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(obj, bool):
        out[prefix] = float(obj)
    elif isinstance(obj, (int, float)) and obj == obj:
        out[prefix] = float(obj)
    return out


def where(stage: str, attribute: str | None) -> str:
    return f"{stage}@{attribute}" if attribute else stage


def error_text(err: BaseException) -> str:
    """What tag ``asyrp.error`` says of an exception: its type and message."""
    return f"{type(err).__name__}: {err}".strip().removesuffix(":")[:MAX_ERROR]


def quietly(what: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None and a warning on stderr: tracking never fails a stage."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the stage's own outcome stands; say what failed
        print(f"warning: MLflow logging of {what} failed ({type(err).__name__}: {err})", file=sys.stderr, flush=True)
        return None


def _tag_run(c, run: str, params: Params, stage: str, attribute, out: Path, commit, state: str) -> None:
    tags = {
        TAG + "profile": params.profile,
        TAG + "stage." + stage: state,
        "git_commit": commit or git_commit(),
        TAG + "data_version": data_version(out),
        TAG + "model_id": params.active_profile.model.id,
    }
    if attribute:
        tags[TAG + "attribute"] = attribute
    for k, v in tags.items():
        c.set_tag(run, k, v)


def _end(c, run: str, status: str = "FINISHED", error: str | None = None) -> None:
    """End ``run`` (its end time: now). FINISHED drops an ``asyrp.error`` of an earlier failure; FAILED sets it,
    unless it already ends with ``error`` (the stage's own mark names the stage: a flow's catch-all keeps it)."""
    tags = c.get_run(run).data.tags
    if error is None:
        if ERROR in tags:
            c.delete_tag(run, ERROR)
    elif not tags.get(ERROR, "").endswith(error):
        c.set_tag(run, ERROR, error[:MAX_ERROR])
    c.set_terminated(run, status)


def log_stage(
    params: Params,
    stage: str,
    attribute: str | None = None,
    out: Path = OUT,
    key: str | None = None,
    register: bool = True,
    commit: str | None = None,
) -> str | None:
    """Log what ``stage`` wrote under ``out`` to its run, then end the attribute run FINISHED (and the parent
    after the last stage, `report`); returns the run id (None when tracking is off)."""
    if not enabled():
        return None
    c = client()
    parent, child = run_ids(params, attribute, key)
    run = child or parent
    _tag_run(c, run, params, stage, attribute, out, commit, "done")
    _log_outputs(c, run, params, stage, attribute, Layout(out), register)
    if child:
        _end(c, child)
    if stage == LAST_STAGE:
        _end(c, parent)
    return run


def log_failure(
    params: Params,
    stage: str,
    attribute: str | None,
    error: str,
    out: Path = OUT,
    key: str | None = None,
    commit: str | None = None,
    status: str = "FAILED",
) -> str | None:
    """``stage`` raised ``error``: end its run and the parent ``status`` (FAILED; KILLED: interrupted), the error
    as tag ``asyrp.error`` (on the parent prefixed by the stage); returns the stage's run id."""
    if not enabled():
        return None
    c = client()
    parent, child = run_ids(params, attribute, key)
    _tag_run(c, child or parent, params, stage, attribute, out, commit, status.lower())
    if child:
        _end(c, child, status, error)
    _end(c, parent, status, f"{where(stage, attribute)}: {error}")
    return child or parent


def end_reproduction(
    params: Params, key: str | None = None, status: str = "FINISHED", error: str | None = None
) -> str | None:
    """End the reproduction's parent run (a flow without a `report` stage, or one that failed outside a
    stage's own mark); returns its id."""
    if not enabled():
        return None
    c = client()
    parent, _ = run_ids(params, None, key)
    _end(c, parent, status, error)
    return parent


def _params(c, run: str, values: dict) -> None:
    existing = c.get_run(run).data.params
    for k, v in values.items():
        if k not in existing:  # MLflow params are write-once; a rerun of the same reproduction keeps them
            c.log_param(run, k, v)


@dataclass(frozen=True)
class Logged:
    """What `log_stage` logs of one stage run: JSON metrics (file, metric-name prefix; ``timings`` too, where the
    stage wrote them), artifacts (file, artifact folder; ``optional`` ones only where the profile writes them) and
    other files it reads."""

    metrics: tuple[tuple[Path, str], ...] = ()
    artifacts: tuple[tuple[Path, str], ...] = ()
    optional: tuple[tuple[Path, str], ...] = ()
    reads: tuple[Path, ...] = ()
    timings: tuple[tuple[Path, str], ...] = ()

    def files(self) -> list[Path]:
        return [f for f, _ in self.metrics + self.timings + self.artifacts + self.optional] + list(self.reads)


def _train(t) -> Logged:
    artifacts = ((t.loss_png, "train"), (t.direction_weights, "direction"), (t.direction_config, "direction"))
    return Logged(((t.metrics_json, "train."),), artifacts, reads=(t.schedule_json, t.loss_csv),
                  timings=((t.timings_json, "train."),))  # fmt: skip


# The one table of what each stage logs: both `log_stage` and the queue (`stage_files`) read it.
# Stages not in it (download, study, toy_analysis, report) log their tags only.
LOGGED: dict[str, Callable[[Layout, str | None], Logged]] = {
    "invert": lambda lay, a: Logged(((lay.invert.metrics_json, "invert."),),
                                    timings=((lay.invert.timings_json, "invert."),)),
    "schedule": lambda lay, a: Logged(
        ((lay.schedule.metrics_json, "schedule."),), ((lay.schedule.curves_png, "schedule"),)
    ),
    "train": lambda lay, a: _train(lay.train(a)),
    "edit": lambda lay, a: Logged(artifacts=((lay.edit(a).grid, "edit"), (lay.edit(a).strip, "edit"))),
    "evaluate": lambda lay, a: Logged(  # S_dir, SC, LPIPS, and the toy oracle's verdict (a 'skipped' note elsewhere)
        ((lay.evaluate(a).metrics_json, ""), (lay.evaluate(a).oracle.metrics_json, "")),
        optional=((lay.evaluate(a).oracle.grid, "toy_eval"),),
    ),
}  # fmt: skip


def logged(stage: str, attribute: str | None, lay: Layout) -> Logged:
    return LOGGED[stage](lay, attribute) if stage in LOGGED else Logged()


def _log_outputs(c, run, params: Params, stage: str, attribute, lay: Layout, register: bool) -> None:
    what = logged(stage, attribute, lay)
    if stage == "train":  # params first: write-once, and the registry needs the direction artifacts below
        _log_train(c, run, params, attribute, lay.train(attribute))
    for f, prefix in what.metrics + tuple(m for m in what.timings if m[0].is_file()):
        c.log_batch(run, metrics=_metrics(read_json(f), prefix))
    for f, folder in what.artifacts + tuple(a for a in what.optional if a[0].exists()):
        c.log_artifact(run, str(f), folder)
    if stage == "train" and register:
        spec = params.attribute(attribute)
        register_direction(c, run, f"asyrp-{params.profile}-{attribute}", spec.source, spec.target)


def _metrics(values: dict, prefix: str, step: int = 0):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(prefix + k, v, now, step) for k, v in _flat("", values, {}).items()]


def _log_train(c, run, params: Params, attribute: str, trained) -> None:
    """train@'s params (prompts, lambdas, schedule, optimiser) and its loss per step."""
    from mlflow.entities import Metric

    spec, tr, sched = params.attribute(attribute), params.active_train, read_json(trained.schedule_json)
    dcfg = read_json(trained.direction_config)
    _params(
        c,
        run,
        {
            "source": spec.source,
            "target": spec.target,
            "lambda_clip": spec.lambda_clip,
            "lambda_recon": dcfg["train"].get("lambda_recon"),
            "t_edit": sched["t_edit"],
            "t_boost": sched["t_boost"],
            "n_train_steps": tr.n_train_steps,
            "optimizer": tr.optimizer,
            "lr": tr.lr,
            "epochs": tr.epochs,
            "direction": tr.direction,
            "loss_form": tr.loss_form,
            "clip_source": tr.clip_source,
            "model_id": params.active_profile.model.id,
            "n_gen_steps": params.active_edit.n_gen_steps,
            "from_noise": spec.trains_from_noise,
            "source_per_image": spec.source_per_image or "",
            "t_0": params.active_inversion.t_0 if params.active_inversion.t_0 is not None else "T-1",
        },
    )
    rows = read_csv(trained.loss_csv)
    for start in range(0, len(rows), 900):  # log_batch takes at most 1000 metrics
        c.log_batch(
            run,
            metrics=[
                Metric(k, float(r[k]), 0, int(r["step"]))
                for r in rows[start : start + 900]
                for k in ("loss", "clip", "recon")
            ],
        )


def register_direction(c, run: str, name: str, source: str, target: str) -> int:
    """A new version of registered model ``name`` from the run's ``direction/`` artifacts; aliases updated."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description=f"Asyrp direction '{source}' -> '{target}'")
    except MlflowException:
        pass  # already registered
    mv = c.create_model_version(
        name, source=f"runs:/{run}/direction", run_id=run, tags={"source": source, "target": target}
    )
    c.set_registered_model_alias(name, "candidate", mv.version)  # "latest" is reserved by MLflow
    try:
        c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        c.set_registered_model_alias(name, "champion", mv.version)
    return int(mv.version)


# ------------------------------------------------------------------------------------------ the queue
# A job that fails stays queued and is retried with backoff: its attempts and next attempt time are in its job.json,
# so the count spans drainer runs. It moves to failed/ only when it still fails RETRY_HOURS after it was queued
# (ASYRP_MLFLOW_RETRY_HOURS); `drain --retry-failed` queues those again.
RETRY_HOURS = 24.0
BACKOFF_S, MAX_BACKOFF_S = 30, 3600  # the wait after the n-th failure: 30 s * 2^(n-1), at most an hour
# MLflow's HTTP client retries a request 7 times over ~4 min with a 120-s timeout per try (its defaults): `report`
# drained a queue against a dead server for ~4 min per job (505 s; 742 s for 3 jobs). A drain bounds them (the
# queue itself retries later); a user's own settings of these variables win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RETRY_COMMAND = "python -m pipeline.tracking drain --retry-failed"


def async_enabled() -> bool:
    return os.environ.get("ASYRP_MLFLOW_ASYNC", "1").lower() not in ("0", "false", "no", "off")


def retry_hours() -> float:
    return float(os.environ.get("ASYRP_MLFLOW_RETRY_HOURS", RETRY_HOURS))


def stage_files(stage: str, attribute: str | None, lay: Layout) -> list[Path]:
    """Every file `log_stage` reads for ``stage`` (what a queued job copies; missing ones are skipped)."""
    return [lay.download.manifest, *logged(stage, attribute, lay).files()]  # the manifest: data_version


def queue_dir(out: Path) -> Path:
    return Path(out) / ".tracking" / "queue"


def failed_dir(out: Path) -> Path:
    return Path(out) / ".tracking" / "failed"


def enqueue(
    params_text: str,
    stage: str,
    attribute: str | None,
    out: Path,
    params: Params,
    outcome: str | None = None,
    error: str | None = None,
) -> Path:
    """Queue the logging of a finished stage: a copy of what it logs, the params text, key and commit. With
    ``outcome`` (FAILED, KILLED) and ``error``: the stage raised; the job marks its runs (see `log_failure`)."""
    q = queue_dir(out)
    q.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{stage}" + (f"-{attribute}" if attribute else "")
    tmp = q / f".{name}"
    lay = Layout(out)
    for f in [lay.download.manifest] if outcome else stage_files(stage, attribute, lay):
        if f.is_file():
            dst = tmp / "out" / f.relative_to(out)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
    commit = git_commit()
    job = {"stage": stage, "attribute": attribute, "params": params_text, "commit": commit, "attempts": 0,
           "key": reproduction_key(params, commit), "queued_at": time.time()}  # fmt: skip
    if outcome:
        job.update(outcome=outcome, stage_error=error or "")
    tmp.mkdir(parents=True, exist_ok=True)
    write_json(tmp / "job.json", job)  # replaced whole (temp file + rename): never torn
    tmp.rename(q / name)  # a job appears whole or not at all
    return q / name


def spawn_drain(out: Path) -> None:
    """Start a detached drainer of the jobs that are due (its output goes to <out>/.tracking/drain.log)."""
    log = open(Path(out) / ".tracking" / "drain.log", "a")  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking", "drain", "--due-only", "--out", str(out)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()


def _jobs(folder: Path) -> list[Path]:
    """The jobs in a queue folder, oldest first (names start with the time they were queued)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def job_where(job_dir: Path) -> str:
    """'train@red' of a job folder <time>-train-red (from its name: its job.json may be torn)."""
    _, stage, *attribute = job_dir.name.split("-", 2)
    return where(stage, attribute[0] if attribute else None)


@contextmanager
def _bounded_http():
    """MLflow's HTTP retries and timeout bounded (HTTP_LIMITS) while a drain runs, then as they were."""
    saved = {k: os.environ.get(k) for k in HTTP_LIMITS}
    for k, v in HTTP_LIMITS.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def store_answers(timeout: float = 5.0) -> bool:
    """Whether the tracking server answers at all (any HTTP status); a store that is no server (sqlite, files)
    counts as answering. Asked after a job failed: when the server is down, the rest need not wait on it too."""
    import urllib.error
    import urllib.request

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()  # noqa: S310 - the user's URI
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _set_aside(job_dir: Path, out: Path, error: str | None = None) -> Path:
    """Move a job to failed/ (with ``error`` in error.txt where its job.json cannot hold it)."""
    dest = failed_dir(out) / job_dir.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    job_dir.rename(dest)
    if error:
        (dest / "error.txt").write_text(error + "\n")
    return dest


def _log_job(job_dir: Path, job: dict, quiet: bool) -> None:
    from .params import params_from_dict, parse_yaml

    stage, attribute, files, outcome = job["stage"], job["attribute"], job_dir / "out", job.get("outcome")
    params = params_from_dict(parse_yaml(job["params"], job_dir.name), job_dir.name)
    if outcome:
        err = job.get("stage_error", "")
        run = log_failure(params, stage, attribute, err, files, job["key"], job["commit"], outcome)
    else:
        run = log_stage(params, stage, attribute, files, job["key"], commit=job["commit"])
    shutil.rmtree(job_dir)
    if not quiet:
        did = f"marked {where(stage, attribute)} {outcome} in" if outcome else f"logged {where(stage, attribute)} to"
        print(f"mlflow: {did} run {run} ({tracking_uri()})", flush=True)


def _retry_later(job_dir: Path, job: dict, err: Exception, out: Path) -> str:
    """Count a failed attempt in the job and set its next one; past the time budget, move it to failed/."""
    now = time.time()
    job["attempts"] = job.get("attempts", 0) + 1
    job["error"] = f"{type(err).__name__}: {err}"
    job["next_attempt"] = now + min(BACKOFF_S * 2 ** (job["attempts"] - 1), MAX_BACKOFF_S)
    queued = job.setdefault("queued_at", now)  # jobs queued before the time budget existed: from now
    write_json(job_dir / "job.json", job)
    clock = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    if now - queued >= retry_hours() * 3600:
        kept = _set_aside(job_dir, out)
        tail = f"gave up after {retry_hours():g} h, kept in {kept.parent}"
    else:
        tail = f"retried from {clock(job['next_attempt'])} until {clock(queued + retry_hours() * 3600)}"
    return f"{job_where(job_dir)}: {job['error']} (attempt {job['attempts']}; {tail})"


def drain(out: Path = OUT, quiet: bool = False, due_only: bool = False) -> list[str]:
    """Log every queued job in order (waits for a running drainer first); returns the jobs that failed.

    ``due_only`` (a stage's detached drainer): stop at the first job whose next attempt is not due (the queue is
    logged in order); `report` and the CLI try every job now. When a job fails and the tracking server does not
    answer, the rest stay queued untried. A torn job.json is set aside in failed/ and the rest drain."""
    import fcntl

    q, failed = queue_dir(out), []
    if not q.is_dir():
        return []
    with open(q / ".lock", "w") as lock, _bounded_http():
        fcntl.flock(lock, fcntl.LOCK_EX)
        for job_dir in _jobs(q):
            try:
                job = json.loads((job_dir / "job.json").read_text())
            except (OSError, ValueError) as err:  # torn or missing: no attempt can log it
                error = f"unreadable job.json ({type(err).__name__}: {err})"
                failed.append(f"{job_where(job_dir)}: {error}; set aside in {_set_aside(job_dir, out, error)}")
                print(f"warning: MLflow logging of {failed[-1]}", file=sys.stderr, flush=True)
                continue
            if due_only and job.get("next_attempt", 0) > time.time():
                break
            try:
                _log_job(job_dir, job, quiet)
            except Exception as err:  # noqa: BLE001 - kept on disk and retried; say what failed
                failed.append(_retry_later(job_dir, job, err, out))
                print(f"warning: MLflow logging of {failed[-1]}", file=sys.stderr, flush=True)
                if not store_answers():
                    print(
                        f"warning: {tracking_uri()} does not answer; the rest stay queued", file=sys.stderr, flush=True
                    )
                    break
    return failed


def requeue_failed(out: Path) -> int:
    """Move the jobs given up on (failed/) back to the queue with a fresh time budget; returns how many."""
    jobs = _jobs(failed_dir(out))
    queue_dir(out).mkdir(parents=True, exist_ok=True)
    for job_dir in jobs:  # their names keep their place: before the jobs queued after them
        try:
            job = json.loads((job_dir / "job.json").read_text())
            job.update(attempts=0, queued_at=time.time(), next_attempt=0)
            write_json(job_dir / "job.json", job)
        except (OSError, ValueError):
            pass  # torn: the drain sets it aside again, with its error
        job_dir.rename(queue_dir(out) / job_dir.name)
    return len(jobs)


def pending_line(out: Path) -> str:
    """One line on what is not in MLflow yet (queued, given up) and the command that retries it."""
    queued, failed = [job_where(j) for j in _jobs(queue_dir(out))], [job_where(j) for j in _jobs(failed_dir(out))]
    if not queued and not failed:
        return f"mlflow: every queued stage is logged ({tracking_uri()})"
    parts = [f"{len(queued)} still queued ({', '.join(queued)})"] if queued else []
    parts += [f"{len(failed)} failed ({', '.join(failed)}) in {failed_dir(out)}"] if failed else []
    return f"mlflow: {'; '.join(parts)}: not logged to {tracking_uri()}; retry with `{RETRY_COMMAND} --out {out}`"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="MLflow tracking of the pipeline's stages")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drain", help="log every queued stage (waits for a running drainer), then exit")
    d.add_argument("--out", default=str(OUT))
    d.add_argument("--retry-failed", action="store_true", help="queue the jobs in failed/ again first")
    d.add_argument("--due-only", action="store_true", help="stop at a job whose next retry is not due")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.retry_failed:
        print(f"mlflow: {requeue_failed(out)} failed job(s) queued again", flush=True)
    failed = drain(out, due_only=args.due_only)
    line = pending_line(out)
    left = bool(_jobs(queue_dir(out)) or _jobs(failed_dir(out)))
    print(line, file=sys.stderr if left else sys.stdout, flush=True)
    sys.exit(1 if failed or left else 0)


def load_registered_direction(uri: str, device="cpu"):
    """``models:/asyrp-<profile>-<attribute>@<alias>`` (or ``/<version>``) -> (direction, DirectionConfig)."""
    import mlflow

    from asyrp.core.directions import load_direction

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    c = client()
    name, _, ref = uri.removeprefix("models:/").partition("@")
    mv = c.get_model_version_by_alias(name, ref) if ref else c.get_model_version(*name.split("/"))
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(mv.run_id, "direction", tmp)
        return load_direction(Path(local) / "direction", device)


if __name__ == "__main__":
    main()
