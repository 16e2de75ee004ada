"""Prefect flows: `reproduce` a profile, add a `new-attribute` from two prompts, `edit` a folder of images.

The task runner is a parameter: local threads by default, or ``dask_address="tcp://scheduler:8786"`` for a
Dask cluster (prefect-dask), where inversion shards and attributes are mapped over the workers (one GPU
per worker: start each worker with ``CUDA_VISIBLE_DEVICES`` set and ``--nthreads 1``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import tracking
from pipeline.layout import Layout
from pipeline.params import ParamsError, params_from_dict

from .editing import edit_chunk_task, list_images_for
from .tasks import (
    download_task,
    edit_task,
    evaluate_task,
    invert_finish_task,
    invert_shard_task,
    outputs_present,
    params_of,
    plan_task,
    report_task,
    schedule_task,
    train_task,
)


def task_runner(dask_address: str | None, max_workers: int = 2):
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=max_workers)


def load_params_dict(params_path: str, profile: str | None) -> dict:
    path = Path(params_path)
    if not path.exists():
        raise FileNotFoundError(f"params file {path} not found")
    data = yaml.safe_load(path.read_text())
    if profile:
        if profile not in data.get("profiles", {}):
            raise ParamsError([f"profile: unknown profile {profile!r}; valid: {', '.join(data['profiles'])}"])
        data["profile"] = profile
        data["attributes"] = list(data["catalog"].get(profile, {}))[:1] or data["attributes"]
    return data


def _dataset_stages(params_json: str, out: str) -> None:
    """download -> invert (mapped over shards) -> schedule, reusing cached results whose files exist."""
    refresh = lambda stage: {"refresh_cache": not outputs_present(out, stage)}  # noqa: E731
    download_task.with_options(**refresh("download"))(params_json, out)
    shards = plan_task(params_json, out)
    done = invert_shard_task.map(params_json, out, [s for s, _ in shards], [k for _, k in shards])
    invert_finish_task.with_options(**refresh("invert"))(params_json, out, done.result())
    schedule_task.with_options(**refresh("schedule"))(params_json, out)


def _attribute_stages(params_json: str, out: str, attributes: list[str], key: str | None) -> list[dict]:
    trained = train_task.map(params_json, out, attributes, key)
    edited = edit_task.map(params_json, out, attributes, key, trained)
    return evaluate_task.map(params_json, out, attributes, key, edited).result()


@contextmanager
def _reproduction(params_json: str, key: str | None, finish: bool) -> Iterator[None]:
    """The reproduction's parent MLflow run around a flow's stages: created first (so the mapped tasks all
    find the one run), ended FAILED when a stage raises (a stage's own mark, naming it, is kept) and, with
    ``finish`` (no `report` stage to end it), FINISHED at the end. Tracking failures only warn."""
    p = params_of(params_json) if tracking.enabled() else None
    if p is not None:
        tracking.quietly("the reproduction", tracking.run_ids, p, None, key)
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        if p is not None:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            error = tracking.error_text(err)
            tracking.quietly("the reproduction", tracking.end_reproduction, p, key, status, error)
        raise
    if p is not None and finish:
        tracking.quietly("the reproduction", tracking.end_reproduction, p, key)


@flow(name="reproduce-run", log_prints=True)
def _reproduce(params_json: str, out: str) -> dict:
    params = json.loads(params_json)
    key = tracking.reproduction_key(params_from_dict(params)) if tracking.enabled() else None
    with _reproduction(params_json, key, finish=False):  # report_task ends the parent run
        _dataset_stages(params_json, out)
        results = _attribute_stages(params_json, out, params["attributes"], key)
        report_task(params_json, out, results, key)
    return {"attributes": params["attributes"], "evaluate": results}


@flow(name="reproduce", log_prints=True)
def reproduce(
    profile: str | None = None, params_path: str = "params.yaml", out: str = "outputs", dask_address: str | None = None
) -> dict:
    """The whole pipeline of a profile, as `dvc repro` runs it (without DVC's versioning)."""
    data = load_params_dict(params_path, None)
    if profile:
        data = load_params_dict(params_path, profile)
        data["attributes"] = list(data["catalog"][profile])
    params_from_dict(data)  # validate before any compute
    params_json = json.dumps(data)
    return _reproduce.with_options(task_runner=task_runner(dask_address))(params_json, out)


def attribute_name(target: str) -> str:
    """'smiling face' -> 'smiling_face': a valid attribute key (DVC stage and file names)."""
    name = re.sub(r"[^a-z0-9]+", "_", target.lower()).strip("_")
    return name[:48] or "attribute"


def _check_new(data: dict, name: str, source: str, target: str, out: str, overwrite: bool) -> None:
    problems = []
    if not source.strip():
        problems.append("source: the source prompt is empty")
    if not target.strip():
        problems.append("target: the target prompt is empty")
    if source.strip().lower() == target.strip().lower():
        problems.append("target: must differ from the source prompt")
    exists = name in data["catalog"].get(data["profile"], {}) or Layout(out).attribute(name).exists()
    if exists and not overwrite:
        problems.append(
            f"name: attribute {name!r} already exists for profile {data['profile']!r} "
            f"(in params.yaml or {out}/attributes/{name}); pass overwrite=true or another name"
        )
    if problems:
        raise ParamsError(problems, "new-attribute parameters")


@flow(name="new-attribute", log_prints=True)
def new_attribute(
    source: str,
    target: str,
    name: str | None = None,
    profile: str | None = None,
    lambda_clip: float | None = None,
    lambda_recon: float | None = None,
    from_noise: bool = False,
    n_train_images: int | None = None,
    n_test_images: int | None = None,
    overwrite: bool = False,
    params_path: str = "params.yaml",
    out: str = "outputs",
    dask_address: str | None = None,
) -> dict:
    """Train, edit, evaluate and register a direction for a new attribute from two prompts, reusing the
    latents and LPIPS curves already computed for the same model and data."""
    log = get_run_logger()
    data = load_params_dict(params_path, profile)
    name = name or attribute_name(target)
    _check_new(data, name, source, target, out, overwrite)
    catalog = data["catalog"][data["profile"]]
    default_clip = next(iter(catalog.values()), {}).get("lambda_clip", 0.8)
    data["custom_attributes"] = {
        **data.get("custom_attributes", {}),
        name: {
            "source": source,
            "target": target,
            "lambda_clip": lambda_clip or default_clip,
            "lambda_recon": "auto" if lambda_recon is None else lambda_recon,
            "from_noise": from_noise,
        },
    }
    data["attributes"] = [name]
    inv = data["profiles"][data["profile"]].setdefault("overrides", {}).setdefault("inversion", {})
    inv.update({k: v for k, v in (("n_train_images", n_train_images), ("n_test_images", n_test_images)) if v})
    params = params_from_dict(data, "new-attribute parameters")  # every other check, before any compute
    params_json = json.dumps(data)
    log.info(f"new attribute {name!r}: {source!r} -> {target!r} on profile {params.profile}")
    key = tracking.reproduction_key(params) if tracking.enabled() else None
    run = _reproduce_attribute.with_options(task_runner=task_runner(dask_address))
    result = run(params_json, out, name, key)
    result["registered_model"] = f"models:/asyrp-{params.profile}-{name}@candidate" if tracking.enabled() else None
    return result


@flow(name="new-attribute-run", log_prints=True)
def _reproduce_attribute(params_json: str, out: str, name: str, key: str | None) -> dict:
    with _reproduction(params_json, key, finish=True):
        _dataset_stages(params_json, out)
        (metrics,) = _attribute_stages(params_json, out, [name], key)
    return {"attribute": name, "evaluate": metrics}


@flow(name="edit", log_prints=True)
def edit_images(
    folder: str,
    directions: list[str],
    coefficients: list[float] | None = None,
    profile: str | None = None,
    out: str = "outputs/edits",
    n_gen_steps: int | None = None,
    chunk: int = 8,
    params_path: str = "params.yaml",
    dask_address: str | None = None,
) -> dict:
    """Apply registered directions (``models:/asyrp-<profile>-<attribute>@<alias>``) with coefficients to
    a folder of images: DDIM inversion and Asyrp editing mapped over chunks of images."""
    data = load_params_dict(params_path, profile)
    coefficients = coefficients or [1.0] * len(directions)
    if not directions or len(coefficients) != len(directions):
        raise ParamsError([f"coefficients: {len(coefficients)} values for {len(directions)} directions"])
    params_from_dict(data)
    params_json = json.dumps(data)
    images = list_images_for(folder)
    chunks = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    run = _edit_run.with_options(task_runner=task_runner(dask_address))
    return run(params_json, chunks, directions, coefficients, out, n_gen_steps)


@flow(name="edit-run", log_prints=True)
def _edit_run(params_json, chunks, directions, coefficients, out, n_gen_steps) -> dict:
    written = edit_chunk_task.map(
        unmapped(params_json),
        chunks,
        unmapped(directions),
        unmapped(coefficients),
        unmapped(out),
        unmapped(n_gen_steps),
    ).result()
    files = [f for part in written for f in part]
    return {"edited": len(files), "out": out}
