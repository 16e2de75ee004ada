"""Stage `schedule`: LPIPS(x, P_t) and LPIPS(x, x_t) along the DDIM inversion, averaged over N images.

outputs/schedule/curves.csv   t, lpips_pred_x0, lpips_xt        (DVC plot)
outputs/schedule/curves.png   both curves with the thresholds
outputs/schedule/metrics.json t_boost (prompt independent), t_edit for identical prompts (delta = 0), n

The per-attribute t_edit (threshold 0.33 x cos(prompts)) is chosen by `train@<attribute>` from these
curves, so changing one attribute's prompts never reruns this stage; the `report` stage gathers every
attribute's t_edit / t_boost into Table 2's form.
"""

from __future__ import annotations

from pathlib import Path

from asyrp.core.schedule import LpipsCurves, crossing_t, lpips_curves
from asyrp.data.latents import LatentStore
from asyrp.models.perceptual import RANDOM_BACKBONE_NOTE

from ..common import (
    OUT,
    Layout,
    line_plot,
    load_metric_lpips,
    load_model,
    stage_main,
    write_csv,
    write_metrics,
)
from ..params import Params

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("t_edit_max", "t_boost")


def run(params: Params, out: Path = OUT) -> dict:
    sch, inv, lay = params.active_schedule, params.active_inversion, Layout(out)
    model = load_model(params)
    lpips = load_metric_lpips(params, model.unet.device)
    store = LatentStore(lay.invert.split("train"))
    ids = store.ids[: sch.n_images]
    curves: LpipsCurves | None = None
    for _, cols in store.iter_batches(["image"], inv.batch_size, ids=ids):
        x0 = cols["image"].float().div(127.5).sub(1).to(model.unet.device)
        part = lpips_curves(model, lpips, x0, sch.n_curve_steps, inv.spacing)
        curves = part if curves is None else curves.merge(part)
    rows = [
        {"t": int(t), "lpips_pred_x0": float(p), "lpips_xt": float(x)}
        for t, p, x in zip(curves.t, curves.lpips_pred_x0, curves.lpips_xt, strict=True)
    ]
    write_csv(lay.schedule.curves_csv, rows)
    metrics = schedule_metrics(curves, sch.lpips_edit_threshold, sch.lpips_boost_threshold)
    metrics.update(n_images=curves.n_images, lpips=lpips.note, lpips_is_paper_metric=lpips.is_paper_metric)
    write_metrics(lay.schedule.metrics_json, lay.schedule.headline_json, metrics, HEADLINE)
    note = "" if lpips.is_paper_metric else f"\n{RANDOM_BACKBONE_NOTE}"
    line_plot(
        lay.schedule.curves_png,
        curves.t,
        {
            "LPIPS(x, P_t) (editing strength)": curves.lpips_pred_x0,
            "LPIPS(x, x_t) (quality deficiency)": curves.lpips_xt,
        },
        "t",
        "LPIPS",
        f"LPIPS along DDIM inversion, {curves.n_images} images{note}",
        hlines={
            f"t_edit threshold {sch.lpips_edit_threshold:g}": sch.lpips_edit_threshold,
            f"t_boost threshold {sch.lpips_boost_threshold:g}": sch.lpips_boost_threshold,
        },
    )
    return metrics


def schedule_metrics(curves: LpipsCurves, edit_threshold: float, boost_threshold: float) -> dict:
    """t_boost and the delta = 0 t_edit; a curve that never crosses gives null and a reason, not a crash
    (the attribute's own override may still make the run valid)."""
    out = {}
    for key, values, thr in (
        ("t_edit_max", curves.lpips_pred_x0, edit_threshold),
        ("t_boost", curves.lpips_xt, boost_threshold),
    ):
        try:
            out[key] = crossing_t(curves.t, values, thr, key)
        except ValueError as err:
            out[key], out[f"{key}_error"] = None, str(err)
    return out


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
