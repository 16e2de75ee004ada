"""The toy world's dataset: the procedural shapes of `asyrp.data` with known factors and captions.

`make_toy_dataset` writes the standard prepared-dataset layout (images/<id>.png, manifest.csv with the
factor columns shape, colour, size, background, cx, cy, caption; report.json) from the generator with
seed ``TOY_SEED_BASE + seed``. The toy DDPM and CLIP trained on other seeds (10_000 + step and
20_000 + step), so the pipeline's train and test splits are images neither model was trained on; the
pipeline's invert stage splits them into train (f_t training) and test (held-out evaluation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.datasets import make_shapes_dataset
from .generator import FACTORS, shape_extent

TOY_SEED_BASE = 1_000


def make_toy_dataset(out_dir: str | Path, n_images: int, image_size: int = 32, seed: int = 0) -> dict:
    """Prepared dataset of `n_images` toy images; deterministic by seed; returns the report dict."""
    report = make_shapes_dataset(out_dir, n_images, image_size, TOY_SEED_BASE + seed)
    return {**report, "kind": "toy", "generator_seed": TOY_SEED_BASE + seed}


def factors_from_rows(rows: list[dict], image_size: int = 32) -> dict[str, np.ndarray]:
    """The generator's factor dict (indices, cx, cy, radius) from manifest rows."""
    f = {k: np.array([FACTORS[k].index(r[k]) for r in rows], np.int64) for k in FACTORS}
    f["cx"] = np.array([int(r["cx"]) for r in rows], np.int64)
    f["cy"] = np.array([int(r["cy"]) for r in rows], np.int64)
    f["radius"] = shape_extent(f["size"], image_size)[0]
    return f
