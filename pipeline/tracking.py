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
drain`` waits for and reports anything left. A job that fails 3 times moves to ``.tracking/failed/``. A
stage that fails queues its FAILED mark the same way (in order after what it follows) and drains at once.
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
from dataclasses import dataclass
from pathlib import Path

from .io import OUT, Layout, read_csv, read_json
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
    """What `log_stage` logs of one stage run: JSON metrics (file, metric-name prefix), artifacts (file,
    artifact folder; ``optional`` ones only where the profile writes them) and other files it reads."""

    metrics: tuple[tuple[Path, str], ...] = ()
    artifacts: tuple[tuple[Path, str], ...] = ()
    optional: tuple[tuple[Path, str], ...] = ()
    reads: tuple[Path, ...] = ()

    def files(self) -> list[Path]:
        return [f for f, _ in self.metrics + self.artifacts + self.optional] + list(self.reads)


def _train(t) -> Logged:
    artifacts = ((t.loss_png, "train"), (t.direction_weights, "direction"), (t.direction_config, "direction"))
    return Logged(((t.metrics_json, "train."),), artifacts, reads=(t.schedule_json, t.loss_csv))


# The one table of what each stage logs: both `log_stage` and the queue (`stage_files`) read it.
# Stages not in it (download, study, toy_analysis, report) log their tags only.
LOGGED: dict[str, Callable[[Layout, str | None], Logged]] = {
    "invert": lambda lay, a: Logged(metrics=((lay.invert.metrics_json, "invert."),)),
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
    for f, prefix in what.metrics:
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
MAX_ATTEMPTS = 3


def async_enabled() -> bool:
    return os.environ.get("ASYRP_MLFLOW_ASYNC", "1").lower() not in ("0", "false", "no", "off")


def stage_files(stage: str, attribute: str | None, lay: Layout) -> list[Path]:
    """Every file `log_stage` reads for ``stage`` (what a queued job copies; missing ones are skipped)."""
    return [lay.download.manifest, *logged(stage, attribute, lay).files()]  # the manifest: data_version


def queue_dir(out: Path) -> Path:
    return Path(out) / ".tracking" / "queue"


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
           "key": reproduction_key(params, commit)}  # fmt: skip
    if outcome:
        job.update(outcome=outcome, stage_error=error or "")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "job.json").write_text(json.dumps(job))
    tmp.rename(q / name)  # a job appears whole or not at all
    return q / name


def spawn_drain(out: Path) -> None:
    """Start a detached drainer (its output goes to <out>/.tracking/drain.log)."""
    log = open(Path(out) / ".tracking" / "drain.log", "a")  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [sys.executable, "-m", "pipeline.tracking", "drain", "--out", str(out)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()


def drain(out: Path = OUT, quiet: bool = False) -> list[str]:
    """Log every queued job in order (waits for a running drainer first); returns the jobs that failed."""
    import fcntl

    from .params import params_from_dict, parse_yaml

    q = queue_dir(out)
    if not q.is_dir():
        return []
    failed = []
    with open(q / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for job_dir in sorted(p for p in q.iterdir() if p.is_dir() and not p.name.startswith(".")):
            job = json.loads((job_dir / "job.json").read_text())  # written whole: see enqueue
            stage, attribute, files, outcome = job["stage"], job["attribute"], job_dir / "out", job.get("outcome")
            at = where(stage, attribute)
            try:
                params = params_from_dict(parse_yaml(job["params"], job_dir.name), job_dir.name)
                if outcome:
                    err = job.get("stage_error", "")
                    run = log_failure(params, stage, attribute, err, files, job["key"], job["commit"], outcome)
                else:
                    run = log_stage(params, stage, attribute, files, job["key"], commit=job["commit"])
                shutil.rmtree(job_dir)
                if not quiet:
                    did = f"marked {at} {outcome} in" if outcome else f"logged {at} to"
                    print(f"mlflow: {did} run {run} ({tracking_uri()})", flush=True)
            except Exception as err:  # noqa: BLE001 - kept on disk and retried; say what failed
                job["attempts"] += 1
                job["error"] = f"{type(err).__name__}: {err}"
                (job_dir / "job.json").write_text(json.dumps(job))
                if job["attempts"] >= MAX_ATTEMPTS:
                    dest = q.parent / "failed" / job_dir.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    job_dir.rename(dest)
                failed.append(f"{at}: {job['error']} (attempt {job['attempts']} of {MAX_ATTEMPTS})")
                print(f"warning: MLflow logging of {failed[-1]}", file=sys.stderr, flush=True)
    return failed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="MLflow tracking of the pipeline's stages")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drain", help="log every queued stage (waits for a running drainer), then exit")
    d.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    failed = drain(Path(args.out))
    gone = sorted((Path(args.out) / ".tracking" / "failed").glob("*"))
    if gone:
        print(f"{len(gone)} job(s) gave up after {MAX_ATTEMPTS} attempts, kept in {gone[0].parent}", file=sys.stderr)
    sys.exit(1 if failed or gone else 0)


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
