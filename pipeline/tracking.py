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
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from .common import OUT, Paths, read_csv, read_json
from .params import Params

ROOT = Path(__file__).resolve().parents[1]
TAG = "asyrp."


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
    manifest = Paths(out).data / "manifest.csv"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else "none"


def reproduction_key(params: Params) -> str:
    blob = params.model_dump_json().encode() + git_commit().encode()
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


def log_stage(
    params: Params,
    stage: str,
    attribute: str | None = None,
    out: Path = OUT,
    key: str | None = None,
    register: bool = True,
) -> str | None:
    """Log what ``stage`` wrote under ``out`` to its run; returns the run id (None when tracking is off)."""
    if not enabled():
        return None
    c = client()
    parent, child = run_ids(params, attribute, key)
    run = child or parent
    prof = params.active_profile
    tags = {
        TAG + "profile": params.profile,
        TAG + "stage." + stage: "done",
        "git_commit": git_commit(),
        TAG + "data_version": data_version(out),
        TAG + "model_id": prof.model.id,
    }
    if attribute:
        tags[TAG + "attribute"] = attribute
    for k, v in tags.items():
        c.set_tag(run, k, v)
    _log_outputs(c, run, params, stage, attribute, Paths(out), register)
    return run


def _params(c, run: str, values: dict) -> None:
    existing = c.get_run(run).data.params
    for k, v in values.items():
        if k not in existing:  # MLflow params are write-once; a rerun of the same reproduction keeps them
            c.log_param(run, k, v)


def _log_outputs(c, run, params: Params, stage: str, attribute, paths: Paths, register: bool) -> None:
    if stage == "invert":
        c.log_batch(run, metrics=_metrics(read_json(paths.root / "invert" / "metrics.json"), "invert."))
    elif stage == "schedule":
        c.log_batch(run, metrics=_metrics(read_json(paths.schedule / "metrics.json"), "schedule."))
        c.log_artifact(run, str(paths.schedule / "curves.png"), "schedule")
    elif stage == "train":
        _log_train(c, run, params, attribute, paths, register)
    elif stage == "edit":
        for f in ("grid.png", "strip.png"):
            c.log_artifact(run, str(paths.attribute(attribute) / "edit" / f), "edit")
    elif stage in ("evaluate", "toy_eval"):
        folder = paths.attribute(attribute) / ("evaluate" if stage == "evaluate" else "toy_eval")
        c.log_batch(run, metrics=_metrics(read_json(folder / "metrics.json"), ""))


def _metrics(values: dict, prefix: str, step: int = 0):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(prefix + k, v, now, step) for k, v in _flat("", values, {}).items()]


def _log_train(c, run, params: Params, attribute: str, paths: Paths, register: bool) -> None:
    from mlflow.entities import Metric

    folder = paths.attribute(attribute) / "train"
    spec, tr, sched = params.attribute(attribute), params.active_train, read_json(folder / "schedule.json")
    dcfg = read_json(folder / "direction.json")
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
    rows = read_csv(folder / "loss.csv")
    for start in range(0, len(rows), 900):  # log_batch takes at most 1000 metrics
        c.log_batch(
            run,
            metrics=[
                Metric(k, float(r[k]), 0, int(r["step"]))
                for r in rows[start : start + 900]
                for k in ("loss", "clip", "recon")
            ],
        )
    c.log_batch(run, metrics=_metrics(read_json(folder / "metrics.json"), "train."))
    c.log_artifact(run, str(folder / "loss.png"), "train")
    for f in ("direction.safetensors", "direction.json"):
        c.log_artifact(run, str(folder / f), "direction")
    if register:
        register_direction(c, run, f"asyrp-{params.profile}-{attribute}", spec.source, spec.target)


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


def load_registered_direction(uri: str, device="cpu"):
    """``models:/asyrp-<profile>-<attribute>@<alias>`` (or ``/<version>``) -> (direction, DirectionConfig)."""
    import mlflow

    from asyrp.directions import load_direction

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    c = client()
    name, _, ref = uri.removeprefix("models:/").partition("@")
    mv = c.get_model_version_by_alias(name, ref) if ref else c.get_model_version(*name.split("/"))
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(mv.run_id, "direction", tmp)
        return load_direction(Path(local) / "direction", device)
