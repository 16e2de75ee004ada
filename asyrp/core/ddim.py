"""DDIM as small pure functions (Song et al. 2021; Asyrp Eq. 3, 5, 6, 8).

Notation map (code name -> paper symbol):

    sample                  x_t
    alpha_prod_t            alpha_t  = prod_{s<=t} (1 - beta_s)   (diffusers: ``alphas_cumprod[t]``)
    alpha_prod_t_prev       alpha_{t-1}: the next grid timestep towards 0; 1.0 after the last step
    pred_original_sample    P_t(eps)  "predicted x0"                (Eq. 5)
    pred_sample_direction   D_t(eps)  "direction pointing to x_t"   (Eq. 5)
    sigma_t                 sigma_t(eta)                             (Eq. 3)
    eps_edit                eps(x_t | delta_h), used in P_t only     (Eq. 8, the asymmetric step)

Timestep conventions. A grid is an increasing LongTensor ``tau_1 < ... < tau_S`` of training timesteps.
Inversion treats the image as ``x_{tau_1}`` and runs ``S - 1`` steps ``tau_s -> tau_{s+1}``; generation
runs ``S`` steps ``tau_s -> tau_{s-1}`` where the last one goes to ``tau_0 = -1`` with alpha = 1
(the clean image). This is the official Asyrp code's convention; with the default "uniform" grid
``tau_1 = 0`` and ``tau_S = T - 1 = 999``.

Every coefficient is computed in float64 from ``alphas_cumprod`` and applied to the sample in its own
dtype, so fp16/bf16 samples do not lose precision in the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .config import SPACINGS, check_depth

Tensor = torch.Tensor
EpsFn = Callable[[Tensor, int], Tensor]
"""eps_fn(sample, timestep) -> eps, shape (B, C, H, W) in, same shape out."""


def timestep_grid(
    n_steps: int, num_train_timesteps: int = 1000, spacing: str = "uniform", t_0: int | None = None
) -> Tensor:
    """Increasing grid of ``n_steps`` training timesteps (official: ``int(linspace(0, 1, S) * t_0 + 1e-6)``).

    ``uniform`` is the official Asyrp grid; ``linspace``, ``leading`` and ``trailing`` are the
    ``timestep_spacing`` options of diffusers' DDIMScheduler (without ``steps_offset``). ``t_0`` is the
    inversion depth, the grid's last step (official ``--t_0``, inherited from DiffusionCLIP): None means
    T - 1, the paper's full inversion; a smaller t_0 inverts partially (uniform and linspace only).
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    T = num_train_timesteps
    top = T - 1 if t_0 is None else int(t_0)
    if not 0 < top < T:
        raise ValueError(f"t_0 must be in [1, {T - 1}], got {t_0}")
    check_depth(t_0, spacing, T)
    if n_steps > top + 1:
        raise ValueError(f"n_steps={n_steps} exceeds the {top + 1} timesteps in [0, t_0={top}]")
    if spacing == "uniform":  # float64, + 1e-6, truncation: exactly the official code's seq_inv / seq_train
        # the 1e-6 lifts products like 776.9999.. (S = 10, t_0 = 999) to the official 777
        grid = (np.linspace(0, 1, n_steps) * top + 1e-6).astype(np.int64)
    elif spacing == "linspace":
        grid = np.linspace(0, top, n_steps).round().astype(np.int64)
    elif spacing == "leading":
        grid = np.arange(0, n_steps, dtype=np.int64) * (T // n_steps)
    elif spacing == "trailing":
        grid = (np.round(np.arange(T, 0, -T / n_steps)) - 1).astype(np.int64)[::-1].copy()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    if len(np.unique(grid)) != n_steps:
        raise ValueError(f"spacing {spacing!r} gives repeated timesteps for n_steps={n_steps}")
    return torch.from_numpy(grid)


def alpha_prod(alphas_cumprod: Tensor, t: int) -> float:
    """alpha_t as a float64 scalar; t = -1 (past the last step) gives 1.0."""
    return 1.0 if t < 0 else float(alphas_cumprod[t].double())


def pred_original_sample(sample: Tensor, eps: Tensor, alpha_prod_t: float) -> Tensor:
    """P_t(eps) = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)  (Eq. 5, predicted x0)."""
    return (sample - math.sqrt(1.0 - alpha_prod_t) * eps) / math.sqrt(alpha_prod_t)


def ddim_sigma(alpha_prod_t: float, alpha_prod_t_prev: float, eta: float) -> float:
    """sigma_t = eta sqrt((1 - alpha_{t-1}) / (1 - alpha_t)) sqrt(1 - alpha_t / alpha_{t-1})  (Eq. 3)."""
    if eta == 0.0:
        return 0.0
    var = (1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev)
    return eta * math.sqrt(max(var, 0.0))


def pred_sample_direction(eps: Tensor, alpha_prod_t_prev: float, sigma_t: float = 0.0) -> Tensor:
    """D_t(eps) = sqrt(1 - alpha_{t-1} - sigma_t^2) eps  (Eq. 5, direction pointing to x_t)."""
    return math.sqrt(max(1.0 - alpha_prod_t_prev - sigma_t**2, 0.0)) * eps


def ddim_step(
    sample: Tensor,
    eps: Tensor,
    alpha_prod_t: float,
    alpha_prod_t_prev: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
    eps_edit: Tensor | None = None,
) -> Tensor:
    """x_{t-1} = sqrt(alpha_{t-1}) P_t(eps_edit or eps) + D_t(eps) + sigma_t z  (Eq. 3; Eq. 8 with eps_edit).

    Also the inversion step when ``alpha_prod_t_prev`` is the alpha of the *next larger* timestep.
    """
    sigma_t = ddim_sigma(alpha_prod_t, alpha_prod_t_prev, eta)
    p_t = pred_original_sample(sample, eps if eps_edit is None else eps_edit, alpha_prod_t)
    prev = math.sqrt(alpha_prod_t_prev) * p_t + pred_sample_direction(eps, alpha_prod_t_prev, sigma_t)
    if sigma_t > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor (seed it for reproducibility)")
        prev = prev + sigma_t * noise
    return prev


def theorem1_factor(alpha_prod_t: float, beta_t: float) -> float:
    """(sqrt(1 - alpha_t - beta_t) - sqrt(1 - alpha_t)) / sqrt(1 - beta_t)  (Theorem 1, Eq. 16)."""
    return (math.sqrt(1.0 - alpha_prod_t - beta_t) - math.sqrt(1.0 - alpha_prod_t)) / math.sqrt(1.0 - beta_t)


def inversion_pairs(timesteps: Tensor) -> Iterator[tuple[int, int]]:
    """(t, t_next) pairs of DDIM inversion on a grid: tau_1 -> tau_2 -> ... -> tau_S."""
    ts = [int(t) for t in timesteps]
    return zip(ts[:-1], ts[1:], strict=True)


def generation_pairs(timesteps: Tensor) -> Iterator[tuple[int, int]]:
    """(t, t_prev) pairs of DDIM generation on a grid: tau_S -> ... -> tau_1 -> -1 (alpha = 1)."""
    ts = [int(t) for t in timesteps]
    return zip(reversed(ts), reversed([-1] + ts[:-1]), strict=True)


@torch.no_grad()
def ddim_invert(
    eps_fn: EpsFn,
    x0: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Tensor,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Deterministic DDIM inversion x0 -> x_T (Algorithm 1 step 1; eta = 0).

    ``callback`` receives ``{"t", "t_next", "sample", "eps", "pred_original_sample"}`` at each step,
    which is how the LPIPS curves of the schedule read P_t and x_t for free.
    """
    sample = x0
    for t, t_next in inversion_pairs(timesteps):
        a_t, a_next = alpha_prod(alphas_cumprod, t), alpha_prod(alphas_cumprod, t_next)
        eps = eps_fn(sample, t)
        if callback is not None:
            p_t = pred_original_sample(sample, eps, a_t)
            callback({"t": t, "t_next": t_next, "sample": sample, "eps": eps, "pred_original_sample": p_t})
        sample = ddim_step(sample, eps, a_t, a_next)
    return sample


@torch.no_grad()
def ddim_generate(
    eps_fn: EpsFn,
    x_T: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Plain DDIM generation x_T -> x0 with a constant eta (Eq. 3)."""
    sample = x_T
    for t, t_prev in generation_pairs(timesteps):
        a_t, a_prev = alpha_prod(alphas_cumprod, t), alpha_prod(alphas_cumprod, t_prev)
        eps = eps_fn(sample, t)
        noise = None
        if eta > 0:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        if callback is not None:
            p_t = pred_original_sample(sample, eps, a_t)
            callback({"t": t, "t_prev": t_prev, "sample": sample, "eps": eps, "pred_original_sample": p_t})
        sample = ddim_step(sample, eps, a_t, a_prev, eta=eta, noise=noise)
    return sample
