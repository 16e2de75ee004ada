"""The toy world's generator: coloured shapes on a background, every factor known (numpy only).

``shape_factors(n, image_size, seed)`` draws factor indices into FACTORS, centres and radii;
``render_shapes(f, image_size)`` draws them as (N, S, S, 3) uint8 images. ``asyrp.data.datasets``
writes them in the prepared-dataset layout (``make_shapes_dataset``); the oracle reads them back.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SIZES = {"small": 0.15, "large": 0.3}  # half-extent (circle radius, half side) as a fraction of image_size
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}


FACTORS = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "background": tuple(BACKGROUNDS)}


def shape_extent(size: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(radius, lo) per SIZES index: the half-extent in pixels, and the margin that keeps the whole shape
    inside the image: every centre coordinate lies in [lo, image_size - lo]."""
    radius = np.array(list(SIZES.values()))[size] * image_size
    return radius, np.ceil(radius).astype(np.int64)


def shape_factors(n_images: int, image_size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Factor indices into FACTORS, integer centres and radii (pixels); prefix-stable in n_images."""
    u = np.random.default_rng(seed).random((n_images, 6))  # row-major: image i only uses row i
    f = {k: (u[:, j] * len(v)).astype(np.int64) for j, (k, v) in enumerate(FACTORS.items())}
    f["radius"], lo = shape_extent(f["size"], image_size)
    span = image_size - 2 * lo + 1
    f["cx"], f["cy"] = lo + (u[:, 4] * span).astype(np.int64), lo + (u[:, 5] * span).astype(np.int64)
    return f


def render_shapes(f: dict[str, np.ndarray], image_size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 images for the factors of `shape_factors` (hard edges, no anti-aliasing)."""
    c = np.arange(image_size) + 0.5  # pixel centres
    cx, cy, r = (f[k].astype(np.float64)[:, None, None] for k in ("cx", "cy", "radius"))
    dx, dy = c[None, None, :] - cx, c[None, :, None] - cy  # (N, 1, S), (N, S, 1)
    masks = np.stack([
        dx**2 + dy**2 <= r**2,  # circle of radius r
        (np.abs(dx) <= r) & (np.abs(dy) <= r),  # square of side 2r
        (dy <= r) & (np.abs(dx) <= (dy + r) / 2),  # upward triangle: apex (cx, cy - r), base y = cy + r
    ])  # fmt: skip
    mask = masks[f["shape"], np.arange(len(f["shape"]))]  # (N, S, S)
    fg = np.array(list(COLOURS.values()), np.uint8)[f["colour"]][:, None, None]
    bg = np.array(list(BACKGROUNDS.values()), np.uint8)[f["background"]][:, None, None]
    return np.where(mask[..., None], fg, bg)
