"""Shared plumbing of the stage scripts: loading models from a profile, JSON/CSV/plots, errors.

Every stage module exposes ``run(params, out=OUT, ...) -> dict`` (called by DVC through ``main`` and by
the Prefect flows directly) and ``main()`` for ``python -m pipeline.<stage>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from asyrp.core.precision import autocast_dtype
from asyrp.core.schedule import LpipsCurves
from asyrp.models.clip import ClipModel, load_clip
from asyrp.models.diffusion import DiffusionModel, ModelLoadError, load_diffusion, resolve_device
from asyrp.models.perceptual import Perceptual, load_lpips

from .io import OUT, Layout, _jsonable, read_csv, read_json, write_csv, write_json, write_metrics
from .params import Params, ParamsError, load_params

__all__ = ["OUT", "Layout", "read_csv", "read_json", "write_csv", "write_json", "write_metrics"]  # from .io


def load_model(params: Params) -> DiffusionModel:
    prof = params.active_profile
    device = resolve_device(prof.device)
    spec = prof.model
    dtype = autocast_dtype(prof.dtype, device)
    model = load_diffusion(spec.id, device, autocast_dtype=dtype, preset=spec.preset, sha256=spec.sha256,
                           channels_last=spec.channels_last)  # fmt: skip
    if model.image_size != prof.model.image_size:
        raise ValueError(
            f"profiles.{params.profile}.model.image_size is {prof.model.image_size}, but "
            f"{prof.model.id} takes {model.image_size}-px images"
        )
    return model


def load_train_clip(params: Params, device) -> ClipModel:
    c = params.active_profile.clip
    return load_clip(c.name, c.pretrained, device)


def load_eval_clip(params: Params, device) -> ClipModel:
    c = params.active_evaluate.clip
    return load_clip(c.name, c.pretrained, device)


def load_metric_lpips(params: Params, device) -> Perceptual:
    spec = params.active_profile.lpips
    return load_lpips(spec.net, spec.allow_random_backbone, device)


def load_curves(out: Path = OUT) -> LpipsCurves:
    """The LPIPS curves written by stage `schedule` (read by train@<attribute>)."""
    sched = Layout(out).schedule
    rows, metrics = read_csv(sched.curves_csv), read_json(sched.metrics_json)
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    return LpipsCurves(
        col("t"), col("lpips_pred_x0"), col("lpips_xt"), metrics["n_images"], metrics["lpips_is_paper_metric"]
    )


def per_image_prompts(template: str, rows: dict[str, dict], ids: list[str]) -> list[str]:
    """``template`` ("a {colour} shape") filled from each image's manifest row (train@, toy_analysis)."""
    try:
        return [template.format(**rows[i]) for i in ids]
    except (KeyError, IndexError, ValueError) as exc:
        columns = sorted(next(iter(rows.values()), {}))
        raise ValueError(
            f"source_per_image {template!r} cannot be filled from the dataset's manifest.csv ({exc!r}); "
            f"its columns: {columns}"
        ) from None


def line_plot(
    path: Path,
    x,
    series: dict[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: dict[str, float] | None = None,
    invert_x: bool = False,
) -> None:
    """A small PNG line plot (DVC's HTML plots need a CDN, so plots here are images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, ys in series.items():
        ax.plot(x, ys, label=label, lw=1.6)
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="gray")
        ax.text(ax.get_xlim()[0], y, f" {label}", va="bottom", fontsize=8, color="gray")
    if invert_x:
        ax.invert_xaxis()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def check_dvc_layout(params: Params) -> None:
    """dvc.yaml reads each attribute's params at ``catalog.<profile>.<attribute>``: insist on that layout."""
    problems = []
    if params.active_profile.catalog != params.profile:
        problems.append(
            f"profiles.{params.profile}.catalog: must be {params.profile!r} for the DVC pipeline "
            f"(dvc.yaml tracks catalog.<profile>.<attribute>), got {params.active_profile.catalog!r}"
        )
    rows = params.catalog.get(params.profile, {})
    for name in params.attributes:
        if name not in rows:
            problems.append(
                f"attributes: {name!r} must be a row of catalog.{params.profile} for the DVC pipeline "
                "(custom_attributes serve the Prefect flows)"
            )
    if problems:
        raise ParamsError(problems, "params.yaml")


def _stage_name(run: Callable) -> str:
    """'train' for pipeline.stages.train.run, also when the module runs as __main__ (python -m)."""
    module = sys.modules.get(run.__module__)
    spec = getattr(module, "__spec__", None)
    return (spec.name if spec else run.__module__).rsplit(".", 1)[-1]


def track(params: Params, stage: str, attribute: str | None, out: Path, params_text: str | None = None) -> None:
    """Log the stage's outputs to MLflow; a tracking failure warns but never fails the finished stage.

    With ``params_text`` (the params file as the stage read it) and ASYRP_MLFLOW_ASYNC on, the logging is
    queued to a background drainer (pipeline.tracking); `report` drains the queue before it ends."""
    from . import tracking

    if not tracking.enabled():
        return
    where = f"{stage}@{attribute}" if attribute else stage
    try:
        if params_text is not None and tracking.async_enabled():
            tracking.enqueue(params_text, stage, attribute, out, params)
            if stage == "report":  # the last stage of a run: everything is in MLflow when it ends, or it says not
                tracking.drain(out)
                print(tracking.pending_line(out), flush=True)
            else:
                tracking.spawn_drain(out)
                print(f"mlflow: queued {where} ({tracking.tracking_uri()}; logged in the background)")
            return
        run_id = tracking.log_stage(params, stage, attribute, out)
        print(f"mlflow: logged {where} to run {run_id} ({tracking.tracking_uri()})")
    except Exception as err:  # noqa: BLE001 - the stage's outputs are safe on disk; say what failed
        print(f"warning: MLflow logging of {stage} failed ({type(err).__name__}: {err})", file=sys.stderr)


def track_failure(
    params: Params, stage: str, attribute: str | None, out: Path, params_text: str | None, err: BaseException
) -> None:
    """The stage raised ``err``: its run and the reproduction's parent run end FAILED (KILLED: interrupted),
    the error as a tag; never raises. Queued like `track`, and then drained at once: nothing runs after a
    failed stage to drain it (an interrupt only starts the drainer)."""
    from . import tracking

    if not tracking.enabled():
        return
    status, error = ("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"), tracking.error_text(err)
    at = tracking.where(stage, attribute)
    try:
        if params_text is not None and tracking.async_enabled():
            tracking.enqueue(params_text, stage, attribute, out, params, outcome=status, error=error)
            if status == "KILLED":
                tracking.spawn_drain(out)
            elif tracking.drain(out):  # prints what it logged; what it could not log is said with the retry
                print(tracking.pending_line(out), flush=True)
            return
        run_id = tracking.log_failure(params, stage, attribute, error, out, status=status)
        print(f"mlflow: marked {at} {status} in run {run_id} ({tracking.tracking_uri()})")
    except Exception as exc:  # noqa: BLE001 - the stage's own error is what counts; say what failed
        print(f"warning: MLflow logging of {at}'s failure failed ({type(exc).__name__}: {exc})", file=sys.stderr)


EXPECTED_ERRORS = (ParamsError, ModelLoadError, ValueError, FileNotFoundError)


def run_cli(call: Callable[[], dict | None], errors: tuple[type[Exception], ...] = ()) -> dict:
    """Run a stage body: expected errors print one line and exit 2 (ASYRP_DEBUG=1: raise); prints the summary."""
    start = time.monotonic()
    try:
        summary = call() or {}
    except EXPECTED_ERRORS + errors as err:
        if os.environ.get("ASYRP_DEBUG"):
            raise
        print(f"error: {err}\n(set ASYRP_DEBUG=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"seconds": round(time.monotonic() - start, 1), **summary}, default=_jsonable))
    return summary


def stage_main(run: Callable[..., dict], description: str, attribute: bool = False) -> Callable[[], None]:
    """A CLI for a stage: ``--params``, ``--out`` (and the attribute); expected errors print one line, exit 2."""

    def main(argv: list[str] | None = None) -> None:
        ap = argparse.ArgumentParser(description=description)
        if attribute:
            ap.add_argument("attribute")
        ap.add_argument("--params", default="params.yaml")
        ap.add_argument("--out", default=str(OUT))
        args = ap.parse_args(argv)
        extra = (args.attribute,) if attribute else ()
        stage, item, out = _stage_name(run), extra[0] if extra else None, Path(args.out)
        loaded = {}

        def call() -> dict:
            loaded["text"] = Path(args.params).read_text()  # what a queued MLflow job logs (see track)
            loaded["params"] = params = load_params(args.params)
            try:
                check_dvc_layout(params)
                return run(params, *extra, out=out)
            except (Exception, KeyboardInterrupt) as err:  # its MLflow runs end FAILED; run_cli reports it
                track_failure(params, stage, item, out, loaded["text"], err)
                raise

        run_cli(call)
        track(loaded["params"], stage, item, out, loaded["text"])

    return main
