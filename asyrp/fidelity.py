"""What CPU bf16 autocast costs in fidelity, path by path, against float32 on the same inputs (toy world).

    python -m asyrp.fidelity                       # offline:toy, 32 held-out images, full inversion (t_0 = T - 1)
    python -m asyrp.fidelity --t-0 500 --json out.json

Each path runs twice, the U-Net in float32 and under bfloat16 autocast (HUNet.precision), everything else equal:

    inversion       x_T (relative L2 to float32's), the eta = 0 reconstruction's PSNR against the image and the
                    toy oracle's intact rate (every factor kept, mask IoU > 0.7, one clean shape)
    editing         a direction trained in float32 applied to float32's x_T: PSNR of the bf16 edit against the
                    float32 edit, and the oracle's read of the target factor (success) in both
    training        train_direction from the same seed and float32's x_T: the loss curves (max relative
                    difference) and the final losses
    schedule        LPIPS(x, P_t) and LPIPS(x, x_t) along the inversion: max absolute difference of the curves,
                    and how far the crossing of each curve's midpoint moves (timesteps): t_edit / t_boost's rule
    time            seconds of each path (one run each: a ratio, not a benchmark; asyrp.bench for those)

A path whose numbers move beyond their noise stays float32 (asyrp.core.precision documents the choice).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import numpy as np
import torch

from .api import invert, new_direction
from .core.config import EditConfig, LossConfig, TrainConfig
from .core.edit import EditDirection, asyrp_generate
from .core.losses import AsyrpLoss
from .core.schedule import crossing_t, lpips_curves
from .core.train import tensor_batches, train_direction
from .data.images import to_model_range
from .models.clip import load_clip
from .models.diffusion import load_diffusion
from .models.perceptual import load_lpips
from .toy import oracle
from .toy.analysis import intact
from .toy.generator import FACTORS, render_shapes, shape_factors

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
FIDELITY_SEED = 5_000  # generator seed: neither the models' training seeds nor the pipeline's (asyrp.toy.data)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).pow(2).mean().item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _edit_config(model, args) -> EditConfig:
    """Plain DDIM (eta = 0, no boosting) with the editing interval [top, 0.6 top]."""
    top = model.num_train_timesteps - 1 if args.t_0 is None else args.t_0
    return EditConfig(t_edit=int(top * 0.6), t_boost=0, n_gen_steps=args.steps, t_0=args.t_0)


def _paths(model, x0, clip, lpips, args, x_T_train=None) -> dict:
    """Inversion, reconstruction, training (from ``x_T_train``, default this run's x_T) and the LPIPS curves once,
    in the model's current precision."""
    cfg = _edit_config(model, args)
    r: dict = {}
    r["x_T"], r["time_inversion"] = _timed(lambda: invert(model, x0, args.steps, t_0=args.t_0))
    r["recon"], r["time_reconstruction"] = _timed(lambda: asyrp_generate(model, r["x_T"], [], cfg))  # no direction
    loss = AsyrpLoss(clip, "circle", "square", LossConfig(templates="none"))
    fresh, dcfg = new_direction(model, "circle", "square", cfg.t_edit, n_train_steps=args.steps, t_0=args.t_0)
    train = TrainConfig(t_edit=cfg.t_edit, n_train_steps=args.steps, t_0=args.t_0, seed=0)
    r["history"], r["time_training"] = _timed(
        lambda: train_direction(
            model, fresh, loss, tensor_batches(r["x_T"] if x_T_train is None else x_T_train, 8, x0), train
        )
    )
    r["direction"] = EditDirection(fresh, dcfg, coefficient=1.0)
    r["curves"], r["time_schedule"] = _timed(lambda: lpips_curves(model, lpips, x0[:8], args.steps))
    return r


def compare(args) -> dict:
    torch.set_num_threads(args.threads)
    model = load_diffusion(args.model)
    clip = load_clip(args.clip, None)
    lpips = load_lpips("alex", allow_random_backbone=True)
    f = shape_factors(args.images, 32, FIDELITY_SEED)
    x0 = to_model_range(render_shapes(f, 32))
    runs: dict = {}
    for name, dtype in PRECISIONS.items():  # float32 first: training starts from its x_T in both
        with model.unet.precision(dtype):
            runs[name] = _paths(model, x0, clip, lpips, args, runs["float32"]["x_T"] if runs else None)
    ref, cfg = runs["float32"], _edit_config(model, args)  # float32's direction, applied by both to its x_T
    for name, dtype in PRECISIONS.items():
        with model.unet.precision(dtype):
            edit = partial(asyrp_generate, model, ref["x_T"], [ref["direction"]], cfg)
            runs[name]["edit"], runs[name]["time_editing"] = _timed(edit)
    return summarise(runs, x0, f)


def summarise(runs: dict, x0: torch.Tensor, f: dict) -> dict:
    a, b = runs["float32"], runs["bfloat16"]
    out: dict = {}
    for name, r in runs.items():
        out[name] = {
            "recon_psnr_db": psnr(r["recon"], x0),
            "recon_intact": intact(r["recon"], f)["intact"],
            "edit_square": float(_success(r["edit"], f)),
            "loss_final": r["history"][-1]["loss"],
            **{k: round(v, 3) for k, v in r.items() if k.startswith("time_")},
        }
    la, lb = (np.array([s["loss"] for s in r["history"]]) for r in (a, b))
    ca, cb = a["curves"], b["curves"]
    out["bfloat16_vs_float32"] = {
        "x_T_rel_l2": float((b["x_T"] - a["x_T"]).norm() / a["x_T"].norm()),
        "recon_psnr_db_between": psnr(b["recon"], a["recon"]),
        "edit_psnr_db_between": psnr(b["edit"], a["edit"]),
        "loss_max_rel_diff": float(np.max(np.abs(lb - la) / np.maximum(np.abs(la), 1e-8))),
        "lpips_pred_x0_max_abs_diff": float(np.max(np.abs(cb.lpips_pred_x0 - ca.lpips_pred_x0))),
        "lpips_xt_max_abs_diff": float(np.max(np.abs(cb.lpips_xt - ca.lpips_xt))),
        "crossing_shift_t": max(
            _shift(ca.t, ca.lpips_pred_x0, cb.lpips_pred_x0), _shift(ca.t, ca.lpips_xt, cb.lpips_xt)
        ),  # fmt: skip
    }
    return out


def _success(images: torch.Tensor, f: dict) -> float:
    """Share of edits the oracle reads as a square (the edit's target factor value)."""
    return float((oracle.read(images).shape == FACTORS["shape"].index("square")).mean())


def _shift(t: np.ndarray, ref: np.ndarray, other: np.ndarray) -> int:
    """|t of the crossing of ref's midpoint value| between two curves: how far a threshold rule would move."""
    level = float(ref.min() + ref.max()) / 2
    try:
        return abs(crossing_t(t, other, level) - crossing_t(t, ref, level))
    except ValueError:  # the other curve never reaches it: the rule would fail, the worst shift there is
        return int(t[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="offline:toy")
    p.add_argument("--clip", default="offline:toy-clip")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of every path (inversion, training, editing)")
    p.add_argument("--t-0", type=int, default=None, help="inversion depth (default T - 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = {"model": args.model, "images": args.images, "steps": args.steps, "t_0": args.t_0, **compare(args)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
