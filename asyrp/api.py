"""Convenience entry points that tie the pieces together with checked inputs."""

from __future__ import annotations

import torch
from torch import nn

from .core.ddim import ddim_invert, timestep_grid
from .core.directions import DirectionConfig, build_direction, official_kind
from .core.hspace import check_image_batch
from .models.archs.convert import arch_family
from .models.diffusion import DiffusionModel
from .seeding import seeded

Tensor = torch.Tensor


@torch.no_grad()
def invert(
    model: DiffusionModel,
    x0: Tensor,
    n_inv_steps: int = 40,
    spacing: str = "uniform",
    batch_size: int | None = None,
    callback=None,
    t_0: int | None = None,
) -> Tensor:
    """DDIM inversion (eta = 0) of images (B, C, H, W) in [-1, 1] -> x_T (B, C, H, W), in batches.

    ``t_0`` < T - 1 inverts partially: the returned latent is x_{t_0} (see ``timestep_grid``)."""
    check_image_batch(x0, model.unet)
    timesteps = timestep_grid(n_inv_steps, model.num_train_timesteps, spacing, t_0)
    bs = batch_size or x0.shape[0]
    out = [
        ddim_invert(model.unet, x0[i : i + bs].to(model.unet.device), model.alphas_cumprod, timesteps, callback)
        for i in range(0, x0.shape[0], bs)
    ]
    return torch.cat(out)


def new_direction(
    model: DiffusionModel,
    source: str,
    target: str,
    t_edit: int,
    t_boost: int | None = None,
    kind: str = "official",
    n_train_steps: int = 40,
    spacing: str = "uniform",
    seed: int = 0,
    t_0: int | None = None,
    **train_info,
) -> tuple[nn.Module, DirectionConfig]:
    """A fresh, seeded direction of ``kind`` sized for this model's h-space, with its config filled in.

    ``kind="official"`` is the official f_t of the model's family: the DDPM DeltaBlock, or ``official_guided`` for
    a converted guided-diffusion (iDDPM / ADM) model (``asyrp.core.directions.official_kind``)."""
    if not source.strip() or not target.strip():
        raise ValueError("source and target prompts must be non-empty")
    if kind == "official":
        kind = official_kind(arch_family(model.unet.unet))
    grid = timestep_grid(n_train_steps, model.num_train_timesteps, spacing, t_0)
    config = DirectionConfig(
        kind=kind,
        h_shape=model.unet.h_shape(),
        temb_channels=model.unet.temb_channels,
        num_train_timesteps=model.num_train_timesteps,
        model_id=model.model_id,
        source=source,
        target=target,
        t_edit=t_edit,
        t_boost=t_boost,
        n_train_steps=n_train_steps,
        spacing=spacing,
        t_0=t_0,
        timesteps=[int(t) for t in grid if t >= t_edit] if kind == "delta_h_t" else [],
        train=dict(train_info),
    )
    with seeded(seed):
        direction = build_direction(config)
    return direction.to(model.unet.device), config
