"""Prefect tasks: thin wrappers over the DVC stages' ``run`` functions (one implementation of each stage).

Parameters travel as JSON text (the validated params) and paths, never tensors, so Prefect's cache keys and
Dask's pickling stay cheap. The expensive dataset-level tasks (download, invert, schedule) cache on a key
made of the parameters they read and the content hashes of their input files; the flows refresh a cached
result whose output files have gone missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from prefect import task

from pipeline import tracking
from pipeline.common import load_model
from pipeline.layout import Layout
from pipeline.params import Params, params_from_dict
from pipeline.stages import download, edit, evaluate, invert, report, schedule, train


@lru_cache(maxsize=4)
def params_of(params_json: str) -> Params:
    return params_from_dict(json.loads(params_json), "flow parameters")


_MODEL_LOCK = threading.Lock()


def _model(params_json: str):
    """One model per worker process, built once (under a lock: threads) and reused by every task it runs."""
    with _MODEL_LOCK:
        return _cached_model(params_json)


@lru_cache(maxsize=2)
def _cached_model(params_json: str):
    return load_model(params_of(params_json))


def pin_threads() -> None:
    """ASYRP_TORCH_THREADS=n fixes torch's intra-op threads. CPU float reductions are ordered by the thread
    partition, so bitwise-identical shards across machines (Dask workers run with OMP_NUM_THREADS=1) need the
    same n everywhere; with different counts results agree to ~1e-5 relative."""
    n = os.environ.get("ASYRP_TORCH_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


Inputs = Callable[[Layout], tuple[Path, ...]]  # the input files whose content a cache key includes


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def _key(stage: str, params_json: str, out: str, keys: tuple[str, ...], files: Inputs) -> str:
    p = params_of(params_json)
    blocks = {
        "profile": p.active_profile.model_dump(),
        "inversion": p.active_inversion.model_dump(),
        "schedule": p.active_schedule.model_dump(),
        "train": p.active_train.model_dump(),
    }
    picked = {k: blocks[k] for k in keys}
    blob = json.dumps([stage, picked, [_sha(f) for f in files(Layout(out))]], sort_keys=True, default=str)
    return f"asyrp-{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _cache(stage: str, keys: tuple[str, ...], files: Inputs = lambda lay: ()):
    def key_fn(context, arguments: dict) -> str:
        return _key(stage, arguments["params_json"], arguments["out"], keys, files)

    return key_fn


IO = dict(retries=2, retry_delay_seconds=3)
CACHED = dict(persist_result=True, cache_expiration=timedelta(days=30))


@task(name="download", cache_key_fn=_cache("download", ("profile", "inversion")), **IO, **CACHED)
def download_task(params_json: str, out: str) -> dict:
    return download.run(params_of(params_json), Path(out))


@task(name="plan-inversion")
def plan_task(params_json: str, out: str) -> list[tuple[str, int]]:
    return invert.plan(params_of(params_json), Path(out))


@task(name="invert-shard", **IO)
def invert_shard_task(params_json: str, out: str, split: str, shard: int) -> str:
    pin_threads()
    invert.run_shards(params_of(params_json), split, [shard], Path(out), model=_model(params_json))
    return f"{split}/{shard}"


@task(
    name="invert-finish",
    cache_key_fn=_cache("invert", ("profile", "inversion", "train"), lambda lay: (lay.download.manifest,)),
    **CACHED,
)
def invert_finish_task(params_json: str, out: str, shards_done: list[str] | None = None) -> dict:
    pin_threads()
    return invert.finish(params_of(params_json), Path(out), model=_model(params_json))


@task(
    name="schedule",
    cache_key_fn=_cache("schedule", ("profile", "schedule"), lambda lay: (lay.invert.index("train"),)),
    **CACHED,
)
def schedule_task(params_json: str, out: str) -> dict:
    return schedule.run(params_of(params_json), Path(out))


def _tracked(stage: str, fn, params_json: str, out: str, attribute: str | None, key: str | None) -> dict:
    """``fn`` (a stage's run) logged to MLflow as the DVC stage logs it: its run ends FINISHED, or FAILED (and
    the parent with it) when the stage raises; a tracking failure only warns."""
    p, at = params_of(params_json), tracking.where(stage, attribute)
    try:
        summary = fn(p, *([attribute] if attribute else []), out=Path(out))
    except (Exception, KeyboardInterrupt) as err:
        if tracking.enabled():
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            error = tracking.error_text(err)
            tracking.quietly(at, tracking.log_failure, p, stage, attribute, error, Path(out), key, status=status)
        raise
    if tracking.enabled():
        run = tracking.quietly(at, tracking.log_stage, p, stage, attribute, Path(out), key=key)
        summary = {**summary, "mlflow_run_id": run}
    return summary


@task(name="train")
def train_task(params_json: str, out: str, attribute: str, key: str | None = None) -> dict:
    return _tracked("train", train.run, params_json, out, attribute, key)


@task(name="edit")
def edit_task(params_json: str, out: str, attribute: str, key: str | None = None, trained: dict | None = None) -> dict:
    return _tracked("edit", edit.run, params_json, out, attribute, key)


@task(name="evaluate")
def evaluate_task(
    params_json: str, out: str, attribute: str, key: str | None = None, edited: dict | None = None
) -> dict:
    return _tracked("evaluate", evaluate.run, params_json, out, attribute, key)


@task(name="report")
def report_task(params_json: str, out: str, evaluated: list | None = None, key: str | None = None) -> dict:
    """The report; its logging ends the reproduction's parent MLflow run FINISHED (as DVC's `report`)."""
    return _tracked("report", report.run, params_json, out, None, key)


def outputs_present(out: str, stage: str) -> bool:
    """Whether a cached dataset-level result still has its files (else the flow refreshes the cache)."""
    lay = Layout(out)
    files = {
        "download": [lay.download.manifest],
        "invert": [lay.invert.index("train"), lay.invert.index("test")],
        "schedule": [lay.schedule.curves_csv, lay.schedule.metrics_json],
    }[stage]
    return all(f.exists() for f in files)
