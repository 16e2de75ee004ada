"""Image tensors <-> files. Model range is [-1, 1], (B, 3, H, W) float32; files are 8-bit RGB PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

Tensor = torch.Tensor


def to_model_range(images_uint8: Tensor | np.ndarray) -> Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 in [0, 255] -> (B, 3, H, W) float32 in [-1, 1]."""
    x = torch.as_tensor(images_uint8)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.float().div(127.5).sub(1.0).contiguous()


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (clamped, rounded)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def load_images(paths: Sequence[str | Path], size: int | None = None) -> Tensor:
    """PNG/JPEG files -> (B, 3, H, W) in [-1, 1]; resized (bicubic) to ``size`` if given and different."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(im))
    return to_model_range(np.stack(arrays))


def save_images(x: Tensor, paths: Sequence[str | Path]) -> None:
    for arr, p in zip(to_uint8(x), paths, strict=True):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)


def grid_image(
    rows: Sequence[Tensor],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """A PIL grid: rows[i] is (N, 3, H, W); optional text labels left of rows / above columns."""
    tiles = [to_uint8(r) for r in rows]
    n_cols = max(len(t) for t in tiles)
    h, w = tiles[0].shape[1:3]
    left = 0 if not row_labels else 8 + 7 * max(len(s) for s in row_labels)
    top = 0 if not col_labels else 14
    canvas = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(tiles):
        y = top + pad + i * (h + pad)
        if row_labels:
            draw.text((4, y + h // 2 - 5), row_labels[i], fill="black")
        for j, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (left + pad + j * (w + pad), y))
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (w + pad), 2), label, fill="black")
    return canvas
