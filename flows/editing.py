"""The `edit` flow's task: invert a chunk of image files and edit them with registered directions."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from prefect import task

from asyrp.api import invert
from asyrp.core.directions import check_compatible
from asyrp.core.edit import EditDirection, asyrp_generate
from asyrp.data.images import load_images, save_images
from pipeline.tracking import load_registered_direction

from .tasks import _model, params_of

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def list_images_for(folder: str) -> list[str]:
    files = sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def image_seed(seed: int, name: str) -> int:
    """The boosting-noise seed of one image: stable across processes (sha256, not Python's salted hash)."""
    return seed + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 100_000


@lru_cache(maxsize=8)
def _direction(uri: str, device: str):
    return load_registered_direction(uri, device)


@task(name="edit-chunk", retries=1)
def edit_chunk_task(
    params_json: str,
    files: list[str],
    directions: list[str],
    coefficients: list[float],
    out: str,
    n_gen_steps: int | None,
) -> list[str]:
    params = params_of(params_json)
    model = _model(params_json)
    dirs = []
    for uri, c in zip(directions, coefficients, strict=True):
        module, cfg = _direction(uri, str(model.unet.device))
        check_compatible(cfg, model.unet.h_shape(), model.unet.temb_channels, model.model_id, model.num_train_timesteps)
        dirs.append(EditDirection(module, cfg, c))
    first = dirs[0].config
    inv, ed = params.active_inversion, params.active_edit
    cfg = params.edit_config(first.t_edit, first.t_boost, first.t_0, n_gen_steps=n_gen_steps or ed.n_gen_steps)
    x0 = load_images(files, model.image_size).to(model.unet.device)
    x_T = invert(model, x0, inv.n_inv_steps, inv.spacing, t_0=first.t_0)
    seeds = [image_seed(ed.seed, Path(f).stem) for f in files]
    edited = asyrp_generate(model, x_T, dirs, cfg, seeds)
    paths = [str(Path(out) / f"{Path(f).stem}.png") for f in files]
    save_images(edited, paths)
    return paths
