"""Stage `train@<attribute>`: choose t_edit / t_boost from the LPIPS curves, then train f_t (Algorithm 2).

outputs/attributes/<a>/train/direction.{safetensors,json}  the direction and its config
outputs/attributes/<a>/train/schedule.json                 t_edit, t_boost, prompt similarity, thresholds, the
                                                           prompts CLIP truncated to its text context
outputs/attributes/<a>/train/loss.csv, loss.png            loss per optimiser step (DVC plot)
outputs/attributes/<a>/train/metrics.json                  final losses (timings.json: seconds, untracked)

Training images come from outputs/latents/train (x_T, the real image as CLIP source, and the cached
P_t^source); attributes with `from_noise: true` (App. J.2) train from x_T ~ N(0, I) instead, with the plain
generation from x_T as the CLIP source image.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from asyrp.api import new_direction
from asyrp.core.config import interval_ok
from asyrp.core.ddim import timestep_grid
from asyrp.core.directions import save_direction
from asyrp.core.edit import random_latents
from asyrp.core.losses import AsyrpLoss
from asyrp.core.schedule import choose_schedule, schedule_times
from asyrp.core.train import TrainBatch, edit_interval, train_direction
from asyrp.data.latents import LatentStore

from ..common import (
    OUT,
    Layout,
    line_plot,
    load_curves,
    load_model,
    load_train_clip,
    per_image_prompts,
    read_csv,
    stage_main,
    write_csv,
    write_json,
    write_metrics,
)
from ..params import Params

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("loss_final", "t_edit", "t_boost")


def check_fixed_times(params: Params, attr: str, curves, similarity: float | None = None) -> None:
    """Refuse t_edit <= t_boost naming the params key and both values, where one comes from params and the other
    from the LPIPS curves (choose_schedule's own error names no key; params load checks pairs both in params).
    Without ``similarity`` (before the models load) only a fixed t_edit is checked: t_boost's rule needs no CLIP."""
    te, tb = params.fixed_times(attr)
    if bool(te) == bool(tb) or (not te and similarity is None):
        return
    sch = params.active_schedule
    t_edit, t_boost, _, _ = schedule_times(curves, similarity, sch.lpips_edit_threshold, sch.lpips_boost_threshold,
                                           te[1] if te else None, tb[1] if tb else None)  # fmt: skip
    if interval_ok(t_edit, t_boost):
        return
    edit = f"{te[0]}={t_edit}" if te else f"t_edit={t_edit} (the LPIPS rule for these prompts)"
    boost = f"{tb[0]}={t_boost}" if tb else f"t_boost={t_boost} (the schedule stage's LPIPS curves)"
    fix = f"raise {te[0]}" if te else f"lower {tb[0]}"
    raise ValueError(f"{attr}: {edit} must be above {boost}: need t_boost < t_edit; {fix}, or set both")


def attribute_schedule(params: Params, attr: str, clip, out: Path = OUT) -> dict:
    """t_edit (0.33 x cos(prompts) on LPIPS(x, P_t)), t_boost (1.2 on LPIPS(x, x_t)), or the overrides."""
    spec, sch = params.attribute(attr), params.active_schedule
    similarity = clip.prompt_similarity(spec.source, spec.target)
    te, tb = params.fixed_times(attr)
    t_0 = params.active_inversion.t_0
    curves = load_curves(out)
    check_fixed_times(params, attr, curves, similarity)
    s = choose_schedule(
        curves,
        similarity,
        sch.lpips_edit_threshold,
        sch.lpips_boost_threshold,
        t_edit=te[1] if te else None,
        t_boost=tb[1] if tb else None,
    )
    if t_0 is not None and s.t_edit > t_0:
        raise ValueError(
            f"{attr}: t_edit={s.t_edit} ({s.source}) is above inversion.t_0={t_0}: the editing "
            f"interval [t_0, t_edit] is empty; lower t_edit (schedule.overrides) or raise t_0"
        )
    return {
        "attribute": attr,
        "source": spec.source,
        "target": spec.target,
        "clip_similarity": similarity,
        "t_edit": s.t_edit,
        "t_boost": s.t_boost,
        "threshold_edit": s.threshold_edit,
        "threshold_boost": s.threshold_boost,
        "chosen_by": s.source,
        "t_0": t_0,
        "paper": spec.paper.model_dump() if spec.paper else None,
    }


def training_data(params: Params, model, t_edit: int, from_noise: bool, out: Path, source_per_image=None):
    """epoch -> TrainBatches, streamed from the latent shards (or seeded noise for from-noise attributes)."""
    inv, tr, device = params.active_inversion, params.active_train, model.unet.device
    if from_noise:
        if inv.t_0 is not None:
            raise ValueError(
                f"from_noise trains from x_T ~ N(0, I), which needs the full inversion depth: "
                f"set inversion.t_0 to null (got {inv.t_0})"
            )
        shape = (3, model.image_size, model.image_size)
        x_T = random_latents(inv.n_train_images, shape, seed=tr.seed)
        return lambda epoch: (
            TrainBatch(x_T[i : i + tr.batch_size], ids=[f"noise{j}" for j in range(i, i + tr.batch_size)])
            for i in range(0, len(x_T), tr.batch_size)
        )
    store = LatentStore(Layout(out).invert.split("train"))
    if store.metadata.get("t_0") != inv.t_0:
        raise ValueError(
            f"the training latents were inverted to t_0={store.metadata.get('t_0')}, params say "
            f"inversion.t_0={inv.t_0}: rerun the invert stage (dvc repro invert)"
        )
    cached = store.metadata["source_pred_t"]
    use_cache = bool(cached) and t_edit >= min(cached) and store.metadata["n_train_steps"] == tr.n_train_steps
    cols = ["x_T", "image"] + (["source_pred"] if use_cache else [])
    rows = {r["id"]: r for r in read_csv(Layout(out).download.manifest)} if source_per_image else {}
    if source_per_image:
        per_image_prompts(source_per_image, rows, store.ids[:1])  # fail before any training

    def batches(epoch: int):
        for ids, c in store.iter_batches(cols, tr.batch_size):
            preds = None
            if use_cache:  # (B, K, 3, H, W) float16 -> {t: (B, 3, H, W)} for the interval's timesteps
                preds = {t: c["source_pred"][:, k].float().to(device) for k, t in enumerate(cached) if t >= t_edit}
            x0 = c["image"].float().div(127.5).sub(1)
            prompts = per_image_prompts(source_per_image, rows, ids) if source_per_image else None
            yield TrainBatch(c["x_T"].to(device), source_pred=preds, x0=x0.to(device), ids=ids, source_prompts=prompts)

    return batches


def run(params: Params, attr: str, out: Path = OUT) -> dict:
    spec, tr, inv = params.attribute(attr), params.active_train, params.active_inversion
    where = Layout(out).train(attr)
    check_fixed_times(params, attr, load_curves(out))  # a fixed t_edit below t_boost: before the model loads
    model = load_model(params)
    clip = load_train_clip(params, model.unet.device)
    sched = attribute_schedule(params, attr, clip, out)
    loss = AsyrpLoss(clip, spec.source, spec.target, params.loss_config(attr))
    sched["truncated_prompts"] = sorted(clip.truncated)  # prompts (with templates) CLIP saw cut to its context
    write_json(where.schedule_json, sched)
    info = {
        "lambda_clip": spec.lambda_clip,
        "lambda_recon": loss.lambda_recon,
        "loss_form": tr.loss_form,
        "clip_source": tr.clip_source,
        "clip": f"{clip.name}/{clip.pretrained}",
        "optimizer": tr.optimizer,
        "lr": tr.lr,
        "epochs": tr.epochs,
        "n_images": inv.n_train_images,
        "from_noise": spec.trains_from_noise,
        "source_per_image": spec.source_per_image,
    }
    direction, dcfg = new_direction(
        model,
        spec.source,
        spec.target,
        sched["t_edit"],
        sched["t_boost"],
        tr.direction,
        tr.n_train_steps,
        inv.spacing,
        tr.seed,
        inv.t_0,
        **info,
    )
    cfg = params.train_config(sched["t_edit"])
    data = training_data(params, model, sched["t_edit"], spec.trains_from_noise, out, spec.source_per_image)
    grid = timestep_grid(tr.n_train_steps, model.num_train_timesteps, inv.spacing, inv.t_0)
    n_steps = -(-inv.n_train_images // tr.batch_size) * tr.epochs * len(edit_interval(grid, sched["t_edit"]))
    bar = tqdm(total=n_steps, desc=f"train {attr}", unit="step")
    rows: list[dict] = []

    def on_step(s: dict) -> None:  # one row and one tick per (batch, t)
        rows.append(
            {"step": len(rows), **{k: s[k] for k in ("epoch", "batch", "t", "loss", "clip", "recon", "cos", "lr")}}
        )
        bar.update(1)
        bar.set_postfix(loss=f"{s['loss']:.3f}", t=s["t"])

    start = time.monotonic()
    history = train_direction(model, direction, loss, data, cfg, callback=on_step)
    seconds = time.monotonic() - start
    bar.close()
    save_direction(direction, dcfg, where.direction)
    write_csv(where.loss_csv, rows)
    line_plot(
        where.loss_png,
        [r["step"] for r in rows],
        {
            "total": [r["loss"] for r in rows],
            "lambda_CLIP * L_dir": [spec.lambda_clip * r["clip"] for r in rows],
            "lambda_recon * L1": [loss.lambda_recon * r["recon"] for r in rows],
        },
        "optimiser step",
        "loss",
        f"{attr}: '{spec.source}' -> '{spec.target}'",
    )
    last = history[-max(1, len(history) // 10) :]  # the final tenth of the steps
    metrics = {
        "loss_final": _mean(last, "loss"),
        "clip_loss_final": _mean(last, "clip"),
        "recon_final": _mean(last, "recon"),
        "steps": len(history),
        "t_edit": sched["t_edit"],
        "t_boost": sched["t_boost"],
        "clip_similarity": sched["clip_similarity"],
        "clip_is_pretrained": clip.is_pretrained,
    }
    write_metrics(where.metrics_json, where.headline_json, metrics, HEADLINE)
    write_json(where.timings_json, {"seconds": seconds, "steps_per_s": len(history) / seconds})
    return metrics


def _mean(rows: list[dict], key: str) -> float:
    return float(torch.tensor([r[key] for r in rows]).mean())


main = stage_main(run, __doc__.splitlines()[0], attribute=True)

if __name__ == "__main__":
    main()
