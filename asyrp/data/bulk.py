"""Bulk DDIM inversion of image files into resumable Parquet shards (the `invert` stage's engine).

Per image: ``image`` (3, H, W) uint8 and ``x_T`` (3, H, W) float32; with ``cache_source`` also
``source_pred`` (K, 3, H, W) float16: P_t^source along plain DDIM from x_T on the training grid for the K
steps t >= cache_min_t (what Algorithm 2 needs from the source trajectory); with ``reconstruct`` also
``recon`` (3, H, W) uint8, the eta = 0 reconstruction. Memory is bounded by one shard (asyrp.data.latents).

A shard is reused only if it was made from the same image contents by the same model, settings and code
(see ``inversion_metadata`` for what is in its key and why) and it verifies in full; otherwise it is
recomputed (asyrp.data.latents.run_sharded).
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..api import invert
from ..core.config import BulkInversion
from ..core.ddim import timestep_grid
from ..core.train import source_trajectory
from ..models.diffusion import DiffusionModel
from .images import load_images, to_uint8
from .latents import run_sharded

# Version of the code that turns (images, model, settings) into shard contents: part of every shard's key.
# Bump it whenever that mapping changes for the same inputs (asyrp.api.invert / ddim_invert, source_trajectory,
# load_images' decoding or resizing, to_uint8's rounding, the columns written below or their dtypes), so that
# shards made by the old code are recomputed instead of silently reused.
CODE_VERSION = 1

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HUNet -> (tensor signature, sha256)


def model_fingerprint(model: DiffusionModel) -> str:
    """sha256 of everything in the model that decides its outputs: the U-Net's config, every weight and
    buffer (name, dtype, shape, bytes) and the noise schedule. Cached per model object (and recomputed if a
    weight was replaced or changed in place since), so shard workers pay for it once per process: 0.3 s
    for the 114 M parameters of the 256-px DDPM on one CPU core. channels_last and the device are not in
    it (same values, other kernels)."""
    unet = model.unet
    state = unet.state_dict()
    signature = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = _FINGERPRINTS.get(unet)
    if cached is not None and cached[0] == signature:
        return cached[1]
    h = hashlib.sha256()
    # diffusers' private entries ("_use_default_values": a list in set order, "_name_or_path", versions)
    # vary between processes and installs without changing the network: left out
    config = {k: v for k, v in dict(unet.unet.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in [*state.items(), ("alphas_cumprod", model.alphas_cumprod), ("betas", model.betas)]:
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.flatten().view(torch.uint8).numpy().data)
    _FINGERPRINTS[unet] = (signature, h.hexdigest())
    return _FINGERPRINTS[unet][1]


def compute_dtype(model: DiffusionModel) -> str:
    """The dtype the U-Net actually runs in (HUNet.compute_dtype): float32, or its autocast dtype where it applies."""
    return str(model.unet.compute_dtype).removeprefix("torch.")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def inversion_metadata(model: DiffusionModel, cfg: BulkInversion, metadata: dict | None = None) -> dict:
    """The shards' metadata: the caller's entries plus everything besides the images that decides what a
    shard holds. run_sharded hashes it, with each image file's sha256, into every shard's key, and keeps a
    shard only if that key (and its full-read check) matches; why each entry is there:

    code_version    the algorithm itself (CODE_VERSION above)
    model_id        which model; model_sha256: its config, weights and schedule (a folder or checkpoint
                    can change under the same id), compute_dtype: bfloat16 / float16 autocast on CUDA
    image_size      the size images are resized to before inversion
    n_inv_steps, spacing, t_0, grid     the inversion grid, hence x_T
    n_train_steps   the grid of the cached source trajectory and of the reconstruction
    cache_source, source_pred_t         whether P_t^source is stored, and for which t: cache_min_t enters
                    through the timesteps it selects (a change that selects the same ones keeps the shards)
    reconstruct     whether the eta = 0 reconstruction is stored
    The caller's entries (the invert stage: split, seed, dtype) say which images and how they were picked.
    The image contents enter per shard through item_key (the file each id points at, as load_images reads
    it: the manifest's source_sha256 is of the original file, not of the converted PNG). shard_size and
    the ids enter through ids_sha256; batch_size, threads and the device are left out (they do not change
    what is computed, only how).
    """
    T = model.num_train_timesteps
    return {
        **(metadata or {}),
        "code_version": CODE_VERSION,
        "model_id": model.model_id,
        "model_sha256": model_fingerprint(model),
        "compute_dtype": compute_dtype(model),
        "image_size": model.image_size,
        "n_inv_steps": cfg.n_inv_steps,
        "spacing": cfg.spacing,
        "t_0": cfg.t_0,
        "grid": timestep_grid(cfg.n_inv_steps, T, cfg.spacing, cfg.t_0).tolist(),
        "n_train_steps": cfg.n_train_steps,
        "cache_source": cfg.cache_source,
        "source_pred_t": cached_timesteps(cfg, T),
        "reconstruct": cfg.reconstruct,
    }


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
    """DDIM-invert image files ``(id, path)`` into Parquet shards under ``out_dir``; resumable, and a shard
    is recomputed when its images, the model, the settings or the code changed (inversion_metadata)."""
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

    return run_sharded(
        items,
        out_dir,
        batch,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        metadata=inversion_metadata(model, cfg, metadata),
        item_key=lambda item: file_sha256(item[1]),
        overwrite=True,
        only_shards=only_shards,
        progress=progress,
    )
