"""Stage `invert`: bulk DDIM inversion of the prepared images into Parquet shards.

outputs/latents/train/  per image: `image` (3, H, W) uint8, `x_T` (3, H, W) float32, and
                        `source_pred` (K, 3, H, W) float16: P_t^source along plain DDIM from x_T on the
                        *training* grid for the K grid steps t >= inversion.cache_min_t (what training needs
                        from the source trajectory, so it never re-runs those U-Net passes)
outputs/latents/test/   per image: `image`, `x_T`, and `recon` (3, H, W) uint8, the eta = 0 reconstruction
outputs/invert/metrics.json  reconstruction error, throughput against bare U-Net forwards

Each split is resumable: shards are written atomically, and a rerun after any interruption (even kill -9)
recomputes only missing shards, with output identical to an uninterrupted run (asyrp.latents).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from asyrp.api import invert
from asyrp.ddim import timestep_grid
from asyrp.images import load_images, to_uint8
from asyrp.latents import LatentStore, run_sharded
from asyrp.train import source_trajectory

from .common import OUT, Paths, load_model, read_csv, stage_main, write_json
from .params import Params


def split_ids(data_dir: Path, n_train: int, n_test: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Seeded, disjoint train/test selection of (id, png path) from the prepared dataset's manifest."""
    rows = sorted(read_csv(data_dir / "manifest.csv"), key=lambda r: r["id"])
    if len(rows) < n_train + n_test:
        raise ValueError(
            f"inversion.n_train_images + n_test_images = {n_train + n_test}, but the dataset has only "
            f"{len(rows)} usable images (see {data_dir / 'report.json'})"
        )
    random.Random(seed).shuffle(rows)
    items = [(r["id"], str(data_dir / "images" / f"{r['id']}.png")) for r in rows]
    return {"train": items[:n_train], "test": items[n_train : n_train + n_test]}


def _metadata(params: Params, model, split: str, cached_ts: list[int]) -> dict:
    inv, train = params.active_inversion, params.active_train
    return {
        "model_id": model.model_id,
        "image_size": model.image_size,
        "split": split,
        "n_inv_steps": inv.n_inv_steps,
        "spacing": inv.spacing,
        "seed": inv.seed,
        "grid": timestep_grid(inv.n_inv_steps, model.num_train_timesteps, inv.spacing).tolist(),
        "n_train_steps": train.n_train_steps,
        "source_pred_t": cached_ts,
        "dtype": inv.dtype,
    }


def run(params: Params, out: Path = OUT) -> dict:
    inv, paths = params.active_inversion, Paths(out)
    model = load_model(params)
    splits = split_ids(paths.data, inv.n_train_images, inv.n_test_images, inv.seed)
    train_grid = timestep_grid(params.active_train.n_train_steps, model.num_train_timesteps, inv.spacing)
    cached_ts = sorted((int(t) for t in train_grid if t >= inv.cache_min_t), reverse=True)
    size = model.image_size
    timings = {"images": 0, "seconds": 0.0, "passes": 0}  # passes: U-Net forwards per image, summed
    passes = {"train": inv.n_inv_steps - 1 + len(cached_ts), "test": inv.n_inv_steps - 1 + len(train_grid)}

    def process(split: str):
        def batch(items: list[tuple[str, str]]) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            x0 = load_images([p for _, p in items], size).to(model.unet.device)
            x_T = invert(model, x0, inv.n_inv_steps, inv.spacing)
            cols = {"image": to_uint8(x0).transpose(0, 3, 1, 2), "x_T": x_T.float().cpu().numpy()}
            if split == "train":
                preds, _ = source_trajectory(model, x_T, train_grid, inv.cache_min_t)
                cols["source_pred"] = torch.stack([preds[t] for t in cached_ts], 1).half().cpu().numpy()
            else:
                _, recon = source_trajectory(model, x_T, train_grid, model.num_train_timesteps, full=True)
                cols["recon"] = to_uint8(recon).transpose(0, 3, 1, 2)
            timings["images"] += len(items)
            timings["passes"] += len(items) * passes[split]
            timings["seconds"] += time.perf_counter() - start
            return cols

        return batch

    for split, items in splits.items():
        meta = _metadata(params, model, split, cached_ts if split == "train" else [])
        run_sharded(
            items,
            paths.split(split),
            process(split),
            shard_size=inv.shard_size,
            batch_size=inv.batch_size,
            metadata=meta,
            overwrite=True,
        )
    metrics = {
        "n_train": len(splits["train"]),
        "n_test": len(splits["test"]),
        **_recon_error(paths),
        **_throughput(model, inv, timings),
    }
    write_json(out / "invert" / "metrics.json", metrics)
    return metrics


def _recon_error(paths: Paths) -> dict:
    """Mean |x0 - DDIM(inversion(x0))| over the test split, in [0, 255] pixel units, and PSNR."""
    store = LatentStore(paths.split("test"))
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
