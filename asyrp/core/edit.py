"""Editing with Asyrp (Algorithm 1, Eq. 9): three phases decided by t_edit and t_boost.

    T >= t >= t_edit      x_{t-1} = sqrt(a_{t-1}) P_t(eps(x_t | delta_h)) + D_t(eps(x_t)),   eta = 0
    t_edit > t >= t_boost plain DDIM, eta = 0
    t_boost > t           plain DDIM with eta = eta_boost (1 in the paper): quality boosting, seeded per image

T is the top of the grid: T - 1 for the paper's full inversion, or t_0 for a partial one (``t_0``).

delta_h = (S_train / S_gen) * sum_i c_i f^i_t(h_t)  keeps the sum of delta_h over the interval when the number
of generative steps differs from training's (Sec. 3.4; the official code scales by the generative step
counts, as here). Optional 1 / sqrt(n) for n directions (official). Coefficients may be negative
(extrapolation, Fig. 7) and may differ per image, which is how a coefficient sweep runs as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from ..models.diffusion import DiffusionModel
from .config import EditConfig
from .ddim import alpha_prod, ddim_step, generation_pairs, timestep_grid
from .directions import DeltaHTable, DirectionConfig, GlobalDirection
from .hspace import asyrp_step

Tensor = torch.Tensor


@dataclass
class EditDirection:
    """A direction ready to apply: the module, its config (for the step rescaling) and its coefficient(s)."""

    module: nn.Module
    config: DirectionConfig
    coefficient: float | Tensor = 1.0  # scalar, or (B,) per image


def per_image_noise(shape, seeds: Sequence[int], step: int, device, dtype) -> Tensor:
    """Noise for one boosting step, drawn per image from (seed_i, step) so batching never changes it."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s) * 100003 + step)
        out.append(torch.randn(shape[1:], generator=g))
    return torch.stack(out).to(device=device, dtype=dtype)


def _delta_h(
    directions: list[EditDirection], n_gen_steps: int, normalize_multi: bool, h: Tensor, t: int, emb: Tensor
) -> Tensor:
    """delta_h = (S_train / S_gen) sum_i c_i f^i_t(h) (Sec. 3.4); h (B, C, h, w), emb (B, D) -> (B, C, h, w)."""
    total = torch.zeros_like(h)
    for d in directions:
        c = torch.as_tensor(d.coefficient, dtype=h.dtype, device=h.device)
        c = c.view(-1, 1, 1, 1) if c.ndim == 1 else c
        scale = d.config.n_train_steps / n_gen_steps
        total = total + c * scale * d.module(h, t, emb)
    if normalize_multi and len(directions) > 1:
        total = total / math.sqrt(len(directions))
    return total


@torch.no_grad()
def asyrp_generate(
    model: DiffusionModel,
    x_T: Tensor,
    directions: list[EditDirection],
    config: EditConfig,
    seeds: Sequence[int] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """x_T (B, C, H, W) -> edited x0 (B, C, H, W) by Eq. 9. No directions: plain DDIM + quality boosting."""
    config.validate(model.num_train_timesteps)
    unet, ac = model.unet, model.alphas_cumprod
    seeds = list(range(x_T.shape[0])) if seeds is None else list(seeds)
    if len(seeds) != x_T.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {x_T.shape[0]} images")
    timesteps = timestep_grid(config.n_gen_steps, model.num_train_timesteps, config.spacing, config.t_0)
    active = [d for d in directions if torch.as_tensor(d.coefficient).abs().sum() > 0]
    delta_h = partial(_delta_h, active, config.n_gen_steps, config.normalize_multi)  # (h, t, emb) -> delta_h
    x = x_T.to(unet.device)
    for step, (t, t_prev) in enumerate(generation_pairs(timesteps)):
        a_t, a_prev = alpha_prod(ac, t), alpha_prod(ac, t_prev)
        if t >= config.t_edit and active:  # phase 1: the asymmetric step, one down pass and two up passes
            x = asyrp_step(unet, x, t, delta_h, a_t, a_prev).prev_sample
            phase = "edit"
        elif t >= config.t_boost:  # phase 2: plain pass, deterministic
            x = ddim_step(x, unet(x, t), a_t, a_prev)
            phase = "denoise"
        else:  # phase 3: quality boosting
            noise = per_image_noise(x.shape, seeds, step, x.device, x.dtype)
            x = ddim_step(x, unet(x, t), a_t, a_prev, eta=config.eta_boost, noise=noise)
            phase = "boost"
        if callback is not None:
            callback({"step": step, "t": t, "phase": phase})
    return x


def generate_in_chunks(
    model: DiffusionModel,
    x_T: Tensor,
    directions: list[EditDirection],
    config: EditConfig,
    seeds: Sequence[int],
    chunk: int = 64,
) -> Tensor:
    """asyrp_generate over `chunk` images at a time (bounded memory), on the CPU at the end; a per-image
    coefficient tensor (N,) is sliced with its images."""
    seeds, out = list(seeds), []
    for i in range(0, len(x_T), chunk):
        ds = [EditDirection(d.module, d.config, _rows(d.coefficient, i, chunk)) for d in directions]
        out.append(asyrp_generate(model, x_T[i : i + chunk], ds, config, seeds[i : i + chunk]).cpu())
    return torch.cat(out)


def _rows(c, i: int, n: int):
    return c[i : i + n] if isinstance(c, Tensor) and c.ndim == 1 else c


def coefficient_sweep(
    model: DiffusionModel,
    x_T: Tensor,
    direction: EditDirection,
    coefficients: Sequence[float],
    config: EditConfig,
    seeds: Sequence[int] | None = None,
    callback=None,
) -> Tensor:
    """Edits of every image at every coefficient in one batched run: (K, B, C, H, W) for K coefficients."""
    k, b = len(coefficients), x_T.shape[0]
    seeds = list(range(b)) if seeds is None else list(seeds)
    coef = torch.tensor(coefficients, dtype=torch.float32).repeat_interleave(b)
    tiled = EditDirection(direction.module, direction.config, coef)
    out = asyrp_generate(model, x_T.repeat(k, 1, 1, 1), [tiled], config, seeds * k, callback)
    return out.view(k, b, *x_T.shape[1:])


def random_latents(n: int, shape: Sequence[int], seed: int = 0) -> Tensor:
    """x_T ~ N(0, I) for editing or training from noise (App. J.2, App. M), (n, *shape)."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def mean_direction(
    model: DiffusionModel, direction: EditDirection, x_T: Tensor, config: EditConfig
) -> tuple[EditDirection, EditDirection]:
    """delta_h_t^mean = mean over images of f_t(h_t) along the edited trajectories, and its time average
    delta_h^global (Sec. 5.3, App. L: the paper uses N = 20 images).

    Returns two ``EditDirection``s (kinds ``delta_h_t`` and ``global``) with the input's coefficient and
    step count, so they apply exactly like the f_t they were read from; save them with ``save_direction``.
    """
    records: dict[int, Tensor] = {}

    class Recorder(nn.Module):
        def forward(self, h, t, emb):
            out = direction.module(h, t, emb)
            records[t] = out.mean(dim=0)
            return out

    asyrp_generate(model, x_T, [EditDirection(Recorder(), direction.config, direction.coefficient)], config)
    ts = sorted(records, reverse=True)
    values = torch.stack([records[t] for t in ts]).cpu()
    h_shape = tuple(values.shape[1:])
    cfg = direction.config
    table_cfg = replace(cfg, kind="delta_h_t", timesteps=ts, h_shape=h_shape)
    global_cfg = replace(cfg, kind="global", timesteps=[], h_shape=h_shape)
    return (
        EditDirection(DeltaHTable(h_shape, ts, values), table_cfg, direction.coefficient),
        EditDirection(GlobalDirection(h_shape, values.mean(dim=0)), global_cfg, direction.coefficient),
    )
