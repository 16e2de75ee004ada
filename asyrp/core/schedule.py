"""Choosing t_edit and t_boost from LPIPS curves along the DDIM inversion trajectory (Sec. 4, App. G).

    editing strength    LPIPS(x, P_t)   t_edit  = smallest t with LPIPS(x, P_t) >= 0.33 - delta,
                                        delta   = 0.33 * d_cos(E_T(y_src), E_T(y_tgt))
                                        (so the threshold is 0.33 * cos similarity, as the official code)
    quality deficiency  LPIPS(x, x_t)   t_boost = smallest t with LPIPS(x, x_t) >= 1.2

Curves are averaged over N images and sampled on a grid of ``n_curve_steps`` timesteps; between grid points
they are linearly interpolated, so the crossing is found to one timestep (Table 2 reports t to 1 step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..models.diffusion import DiffusionModel
from ..models.perceptual import Perceptual
from .config import check_interval
from .ddim import alpha_prod, ddim_invert, pred_original_sample, timestep_grid

Tensor = torch.Tensor


@dataclass
class LpipsCurves:
    """Mean LPIPS curves over ``n_images`` images. t: (K,) increasing timesteps; values: (K,)."""

    t: np.ndarray
    lpips_pred_x0: np.ndarray  # LPIPS(x, P_t)
    lpips_xt: np.ndarray  # LPIPS(x, x_t)
    n_images: int
    is_paper_metric: bool = True

    def merge(self, other: LpipsCurves) -> LpipsCurves:
        """Running mean of two curve sets on the same grid (batches of images)."""
        n = self.n_images + other.n_images
        w = self.n_images / n
        return LpipsCurves(
            self.t,
            w * self.lpips_pred_x0 + (1 - w) * other.lpips_pred_x0,
            w * self.lpips_xt + (1 - w) * other.lpips_xt,
            n,
            self.is_paper_metric and other.is_paper_metric,
        )


@torch.no_grad()
def lpips_curves(
    model: DiffusionModel, lpips: Perceptual, x0: Tensor, n_curve_steps: int = 100, spacing: str = "uniform"
) -> LpipsCurves:
    """LPIPS(x, P_t) and LPIPS(x, x_t) along the inversion of a batch x0 (B, C, H, W) in [-1, 1]."""
    timesteps = timestep_grid(n_curve_steps, model.num_train_timesteps, spacing)
    rows: list[tuple[int, float, float]] = []

    def record(ev: dict) -> None:
        rows.append(
            (
                ev["t"],
                lpips(x0, ev["pred_original_sample"]).mean().item(),
                lpips(x0, ev["sample"]).mean().item(),
            )
        )

    x_T = ddim_invert(model.unet, x0, model.alphas_cumprod, timesteps, callback=record)
    t_last = int(timesteps[-1])  # one more pass gives P_T at the end of the trajectory
    p_T = pred_original_sample(x_T, model.unet(x_T, t_last), alpha_prod(model.alphas_cumprod, t_last))
    rows.append((t_last, lpips(x0, p_T).mean().item(), lpips(x0, x_T).mean().item()))
    t, p, xt = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    return LpipsCurves(t, p, xt, x0.shape[0], lpips.is_paper_metric)


def crossing_t(t: np.ndarray, values: np.ndarray, threshold: float, name: str = "curve") -> int:
    """Smallest integer t at which the piecewise-linear curve reaches ``threshold``."""
    t, values = np.asarray(t, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if values[0] >= threshold:
        return int(math.ceil(t[0]))
    above = np.nonzero(values >= threshold)[0]
    if len(above) == 0:
        raise ValueError(
            f"{name} never reaches {threshold:.4g} (max {values.max():.4g} at t={int(t[values.argmax()])}); "
            "lower the threshold or set t_edit / t_boost by hand (schedule.overrides)"
        )
    i = int(above[0])
    t0, t1, v0, v1 = t[i - 1], t[i], values[i - 1], values[i]
    t_star = t0 + (threshold - v0) * (t1 - t0) / (v1 - v0)
    return int(min(math.ceil(t_star - 1e-9), t1))


def t_edit_threshold(prompt_similarity: float, lpips_edit: float = 0.33) -> float:
    """0.33 - delta with delta = 0.33 * cosine distance of the prompts = 0.33 * cosine similarity."""
    return lpips_edit - lpips_edit * (1.0 - prompt_similarity)


@dataclass
class Schedule:
    t_edit: int
    t_boost: int
    threshold_edit: float | None = None
    threshold_boost: float | None = None
    source: str = "lpips"  # "lpips" | "override"

    def __post_init__(self):
        check_interval(self.t_edit, self.t_boost)


def schedule_times(
    curves: LpipsCurves,
    prompt_similarity: float | None,
    lpips_edit: float = 0.33,
    lpips_boost: float = 1.2,
    t_edit: int | None = None,
    t_boost: int | None = None,
) -> tuple[int, int, float | None, float]:
    """(t_edit, t_boost, threshold_edit, threshold_boost): each the curve's crossing (Sec. 4.1, 4.2) or the explicit
    value, not yet checked against each other. ``prompt_similarity`` may be None only with an explicit t_edit."""
    if prompt_similarity is None and t_edit is None:
        raise ValueError("t_edit's LPIPS rule needs the prompts' similarity (or an explicit t_edit)")
    thr_e = None if prompt_similarity is None else t_edit_threshold(prompt_similarity, lpips_edit)
    te = t_edit if t_edit is not None else crossing_t(curves.t, curves.lpips_pred_x0, thr_e, "LPIPS(x, P_t)")
    tb = t_boost if t_boost is not None else crossing_t(curves.t, curves.lpips_xt, lpips_boost, "LPIPS(x, x_t)")
    return te, tb, thr_e, lpips_boost


def choose_schedule(
    curves: LpipsCurves,
    prompt_similarity: float,
    lpips_edit: float = 0.33,
    lpips_boost: float = 1.2,
    t_edit: int | None = None,
    t_boost: int | None = None,
) -> Schedule:
    """t_edit and t_boost from the curves (Sec. 4.1, 4.2); explicit values override either."""
    times = schedule_times(curves, prompt_similarity, lpips_edit, lpips_boost, t_edit, t_boost)
    src = "override" if (t_edit is not None or t_boost is not None) else "lpips"
    return Schedule(*times, src)
