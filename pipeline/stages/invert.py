"""Stage `invert`: bulk DDIM inversion of the prepared images into Parquet shards.

outputs/latents/train/  per image: `image` (3, H, W) uint8, `x_T` (3, H, W) float32, and
                        `source_pred` (K, 3, H, W) float16: P_t^source along plain DDIM from x_T on the
                        *training* grid for the K grid steps t >= inversion.cache_min_t (what training needs
                        from the source trajectory, so it never re-runs those U-Net passes)
outputs/latents/test/   per image: `image`, `x_T`, and `recon` (3, H, W) uint8, the eta = 0 reconstruction
outputs/invert/metrics.json  reconstruction error (timings.json: throughput against bare U-Net forwards, untracked)

Each split is resumable: shards are written atomically, and a rerun after any interruption (even kill -9)
recomputes only missing shards, with output identical to an uninterrupted run (asyrp.data.latents). A shard
already there is reused only if its key matches (its images' sha256, the model's id and weights hash, the
settings, asyrp.data.bulk.CODE_VERSION: see inversion_metadata) and it verifies in full; otherwise it is
recomputed with one warning line saying which shard and why (a new dataset with the same ids, a flipped byte).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from asyrp.core.config import BulkInversion, build
from asyrp.data.bulk import invert_to_shards
from asyrp.data.latents import LatentStore

from ..common import OUT, Layout, load_model, read_csv, stage_main, write_json, write_metrics
from ..layout import Download
from ..params import Params

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("recon_psnr_db", "recon_l1_255")


def split_ids(data: Download, n_train: int, n_test: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Seeded, disjoint train/test selection of (id, png path) from the prepared dataset's manifest."""
    rows = sorted(read_csv(data.manifest), key=lambda r: r["id"])
    if len(rows) < n_train + n_test:
        raise ValueError(
            f"inversion.n_train_images + n_test_images = {n_train + n_test}, but the dataset has only "
            f"{len(rows)} usable images (see {data.report})"
        )
    random.Random(seed).shuffle(rows)
    items = [(r["id"], str(data.image(r["id"]))) for r in rows]
    return {"train": items[:n_train], "test": items[n_train : n_train + n_test]}


def _bulk_config(params: Params, split: str, timings: dict | None = None) -> BulkInversion:
    inv = params.active_inversion
    return build(
        BulkInversion,
        inv,
        n_train_steps=params.active_train.n_train_steps,
        cache_source=split == "train",
        reconstruct=split == "test",
        timings=timings if timings is not None else {"images": 0, "seconds": 0.0, "passes": 0},
    )


def plan(params: Params, out: Path = OUT) -> list[tuple[str, int]]:
    """Every (split, shard index) of this run: the units that flows map over workers."""
    inv = params.active_inversion
    splits = split_ids(Layout(out).download, inv.n_train_images, inv.n_test_images, inv.seed)
    return [(split, k) for split, items in splits.items() for k in range(-(-len(items) // inv.shard_size))]


def run_shards(
    params: Params, split: str, shards: list[int] | None, out: Path = OUT, model=None, timings: dict | None = None
) -> None:
    """Invert one split, or only some of its shards (shard workers; no index is written then)."""
    inv, lay = params.active_inversion, Layout(out)
    model = model or load_model(params)
    items = split_ids(lay.download, inv.n_train_images, inv.n_test_images, inv.seed)[split]
    meta = {"split": split, "seed": inv.seed, "dtype": inv.dtype}
    invert_to_shards(
        model,
        items,
        lay.invert.split(split),
        _bulk_config(params, split, timings),
        meta,
        progress=shards is None,
        only_shards=shards,
    )


def finish(params: Params, out: Path = OUT, model=None, timings: dict | None = None) -> dict:
    """Validate every shard (computing any missing), write the indexes, outputs/invert/metrics.json and
    timings.json."""
    model = model or load_model(params)
    timings = timings if timings is not None else {"images": 0, "seconds": 0.0, "passes": 0}
    for split in ("train", "test"):
        run_shards(params, split, None, out, model, timings)
    inv = params.active_inversion
    metrics = {"n_train": inv.n_train_images, "n_test": inv.n_test_images, **_recon_error(Layout(out))}
    where = Layout(out).invert
    write_metrics(where.metrics_json, where.headline_json, metrics, HEADLINE)
    write_json(where.timings_json, _throughput(model, inv, timings))
    return metrics


def run(params: Params, out: Path = OUT) -> dict:
    return finish(params, out)


def _recon_error(lay: Layout) -> dict:
    """Mean |x0 - DDIM(inversion(x0))| over the test split, in [0, 255] pixel units, and PSNR."""
    store = LatentStore(lay.invert.split("test"))
    err, sq, n = 0.0, 0.0, 0
    for _, cols in store.iter_batches(["image", "recon"], 64):
        d = cols["image"].float() - cols["recon"].float()
        err, sq, n = err + d.abs().sum().item(), sq + d.pow(2).sum().item(), n + d.numel()
    mse = sq / n
    return {"recon_l1_255": err / n, "recon_psnr_db": float(10 * np.log10(255**2 / max(mse, 1e-12)))}


@torch.no_grad()
def _throughput(model, inv, timings: dict) -> dict:
    """Images/s of this run (0 if every shard was already there) and of bare U-Net forwards x passes."""
    x = torch.zeros(inv.batch_size, 3, model.image_size, model.image_size, device=model.unet.device)
    model.unet(x, 500)  # warm-up
    reps, start = 3, time.perf_counter()
    for _ in range(reps):
        model.unet(x, 500)
    fwd = (time.perf_counter() - start) / reps
    out = {"forward_s_per_batch": fwd, "batch_size": inv.batch_size}
    if timings["images"]:  # ratio 1.0 = the stage runs exactly as fast as its U-Net passes alone
        out["stage_images_per_s"] = timings["images"] / timings["seconds"]
        out["stage_throughput_ratio"] = (timings["passes"] / inv.batch_size * fwd) / timings["seconds"]
    return out


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
