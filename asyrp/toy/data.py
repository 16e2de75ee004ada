"""The toy world's datasets: the generator's shapes with known factors and captions, on their own seeds.

``prepare_dataset("toy", out_dir, image_size, n, seed)`` (`asyrp.data.datasets`; the pipeline's
``dataset.source: toy``) writes the standard prepared-dataset layout (images/<id>.png, manifest.csv with the
factor columns shape, colour, size, background, cx, cy, caption; report.json) with generator seed
``TOY_SEED_BASE + seed``. The toy DDPM and CLIP trained on other seeds (10_000 + step and 20_000 + step),
so the pipeline's images are images neither model was trained on; the invert stage splits them into
train (f_t training) and test (held-out evaluation). `factors_from_rows` reads the factors back.
"""

from __future__ import annotations

import numpy as np

from .generator import FACTORS, shape_extent

TOY_SEED_BASE = 1_000


def factors_from_rows(rows: list[dict], image_size: int = 32) -> dict[str, np.ndarray]:
    """The generator's factor dict (indices, cx, cy, radius) from manifest rows."""
    f = {k: np.array([FACTORS[k].index(r[k]) for r in rows], np.int64) for k in FACTORS}
    f["cx"] = np.array([int(r["cx"]) for r in rows], np.int64)
    f["cy"] = np.array([int(r["cy"]) for r in rows], np.int64)
    f["radius"] = shape_extent(f["size"], image_size)[0]
    return f
