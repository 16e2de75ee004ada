"""Bulk DDIM inversion of image files into resumable Parquet shards (the `invert` stage's engine).

Per image: ``image`` (3, H, W) uint8 and ``x_T`` (3, H, W) float32; with ``cache_source`` also
``source_pred`` (K, 3, H, W) float16: P_t^source along plain DDIM from x_T on the training grid for the K
steps t >= cache_min_t (what Algorithm 2 needs from the source trajectory); with ``reconstruct`` also
``recon`` (3, H, W) uint8, the eta = 0 reconstruction. Memory is bounded by one shard (asyrp.data.latents).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..api import invert
from ..core.config import BulkInversion
from ..core.ddim import timestep_grid
from ..core.train import source_trajectory
from ..models.diffusion import DiffusionModel
from .images import load_images, to_uint8
from .latents import run_sharded


def cached_timesteps(cfg: BulkInversion, num_train_timesteps: int = 1000) -> list[int]:
    """Training-grid timesteps t >= cache_min_t whose P_t^source is cached, from the top (none without cache_source)."""
    grid = timestep_grid(cfg.n_train_steps, num_train_timesteps, cfg.spacing, cfg.t_0)
    return sorted((int(t) for t in grid if t >= cfg.cache_min_t), reverse=True) if cfg.cache_source else []


def passes_per_image(cfg: BulkInversion, num_train_timesteps: int = 1000) -> int:
    """U-Net forwards per image: inversion, cached source steps, reconstruction."""
    n = cfg.n_inv_steps - 1 + len(cached_timesteps(cfg, num_train_timesteps))
    return n + (cfg.n_train_steps if cfg.reconstruct else 0)


def invert_to_shards(
    model: DiffusionModel,
    items: Sequence[tuple[str, str]],
    out_dir,
    cfg: BulkInversion,
    metadata: dict,
    progress: bool = True,
    only_shards: Sequence[int] | None = None,
):
    """DDIM-invert image files ``(id, path)`` into Parquet shards under ``out_dir``; resumable."""
    T = model.num_train_timesteps
    train_grid = timestep_grid(cfg.n_train_steps, T, cfg.spacing, cfg.t_0)
    cached_ts = cached_timesteps(cfg, T)
    passes = passes_per_image(cfg, T)

    @torch.inference_mode()
    def batch(chunk: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        x0 = load_images([p for _, p in chunk], model.image_size).to(model.unet.device)
        x_T = invert(model, x0, cfg.n_inv_steps, cfg.spacing, t_0=cfg.t_0)
        cols = {"image": to_uint8(x0).transpose(0, 3, 1, 2), "x_T": x_T.float().cpu().numpy()}
        if cached_ts:
            preds, _ = source_trajectory(model, x_T, train_grid, cfg.cache_min_t)
            cols["source_pred"] = torch.stack([preds[t] for t in cached_ts], 1).half().cpu().numpy()
        if cfg.reconstruct:
            _, recon = source_trajectory(model, x_T, train_grid, T, full=True)
            cols["recon"] = to_uint8(recon).transpose(0, 3, 1, 2)
        cfg.timings["images"] += len(chunk)
        cfg.timings["passes"] += len(chunk) * passes
        cfg.timings["seconds"] += time.perf_counter() - start
        return cols

    meta = {
        **metadata,
        "model_id": model.model_id,
        "image_size": model.image_size,
        "n_inv_steps": cfg.n_inv_steps,
        "spacing": cfg.spacing,
        "t_0": cfg.t_0,
        "grid": timestep_grid(cfg.n_inv_steps, T, cfg.spacing, cfg.t_0).tolist(),
        "n_train_steps": cfg.n_train_steps,
        "source_pred_t": cached_ts,
    }
    return run_sharded(
        items,
        out_dir,
        batch,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        metadata=meta,
        overwrite=True,
        only_shards=only_shards,
        progress=progress,
    )
