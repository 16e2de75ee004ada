"""Latent shards are reused only when they are what a fresh run would write, and unreadable ones say so.

Stage level (pipeline.stages.download / invert on the plumbing profile, shrunk to 6 images of 32 px and a
few DDIM steps): a dataset swap that keeps the ids reinverts; a 16-byte block flipped in the middle of a
shard is found and the shard recomputed, byte-identical to a clean run; a truncated or damaged shard read
by a stage stops it with one line naming the file. Library level (asyrp.data.bulk.invert_to_shards): a
change of setting, weights or code version reinverts.
"""

import copy
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from asyrp.core.config import BulkInversion
from asyrp.data import bulk
from asyrp.data.latents import LatentStore
from pipeline.common import load_model
from pipeline.params import params_from_dict
from pipeline.stages import download, invert

from .pipeline_util import ROOT, plumbing_params, tool_env

SPLITS = {"train": 4, "test": 2}


def tiny_params(dataset: dict | None = None) -> dict:
    """The plumbing profile with 4 + 2 images in shards of 2 and 3-step grids (a whole invert: ~1 s)."""
    data = plumbing_params()
    prof = data["profiles"]["offline"]
    prof["dataset"] = dataset or {"source": "synthetic", "n_images": 6}
    over = prof["overrides"]
    over["inversion"].update(
        n_train_images=SPLITS["train"], n_test_images=SPLITS["test"], shard_size=2, batch_size=2, n_inv_steps=3
    )
    over["train"]["n_train_steps"] = 3
    return data


def prepare(data: dict, out: Path, model=None) -> None:
    """Stage download, then (given the model) stage invert: invert.run is invert.finish with a fresh model."""
    params = params_from_dict(data)
    download.run(params, out)
    if model is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            invert.finish(params, out, model=model)


def latent_files(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted((out / "latents").rglob("*")) if f.is_file()}


def random_folder(path: Path, n: int = 6, seed: int = 1) -> Path:
    """n random 32-px RGB images: other content than the synthetic shapes, under the same ids once prepared."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path / f"img{i}.png")
    return path


def flip_middle(path: Path, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i : i + n] = bytes(b ^ 0xFF for b in data[i : i + n])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model():
    """The stage's model (pipeline.common.load_model), loaded once for the module's invert runs."""
    return load_model(params_from_dict(tiny_params()))


@pytest.fixture(scope="module")
def base(tmp_path_factory, model) -> Path:
    """download + invert of the synthetic dataset, the state every test starts from (copied)."""
    out = tmp_path_factory.mktemp("base") / "out"
    prepare(tiny_params(), out, model)
    return out


def copy_of(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(base, out)
    return out


def test_dataset_swap_with_same_ids_reinverts(base, model, tmp_path):
    out = copy_of(base, tmp_path)
    swapped = tiny_params({"source": "folder", "path": str(random_folder(tmp_path / "raw")), "n_images": 6})
    prepare(swapped, out)  # same ids 00000..00005, other pictures
    with pytest.warns(UserWarning, match=r"shard-0000\d\.parquet was computed from other inputs") as record:
        invert.finish(params_from_dict(swapped), out, model=model)
    assert len([w for w in record if "other inputs" in str(w.message)]) == 2 + 1  # every shard, one line each
    for split, n in SPLITS.items():
        store = LatentStore(out / "latents" / split)
        assert len(store) == n
        stored = store.get(store.ids, ["image"])["image"]
        for i, image in zip(store.ids, stored, strict=True):  # what the shards hold is the new dataset
            png = np.asarray(Image.open(out / "data" / "images" / f"{i}.png").convert("RGB"))
            assert np.array_equal(image.permute(1, 2, 0).numpy(), png), (split, i)
    clean = tmp_path / "clean"
    prepare(swapped, clean, model)
    assert latent_files(out) == latent_files(clean)  # identical to inverting the new dataset from scratch


def test_flipped_block_in_a_shard_is_recomputed_identically(base, model, tmp_path):
    out = copy_of(base, tmp_path)
    shard = out / "latents" / "train" / "shard-00001.parquet"
    flip_middle(shard)
    with pytest.warns(UserWarning) as record:
        invert.finish(params_from_dict(tiny_params()), out, model=model)
    lines = [str(w.message) for w in record if "shard-" in str(w.message)]
    assert len(lines) == 1 and lines[0].startswith("shard-00001.parquet failed its integrity check"), lines
    assert str(out / "latents" / "train") in lines[0]
    assert latent_files(out) == latent_files(base)


def _stage(name: str, data: dict, out: Path, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", f"pipeline.stages.{name}", "--params", str(params), "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=tool_env(env), capture_output=True, text=True, timeout=300)


def test_rerun_in_another_process_keeps_every_shard(base, tmp_path):
    """Nothing changed: a new process (other hash seed) finds every key equal and every shard intact."""
    out = copy_of(base, tmp_path)
    res = _stage("invert", tiny_params(), out, tmp_path, PYTHONHASHSEED="123")
    assert res.returncode == 0, res.stderr
    assert "recomputed" not in res.stderr and "Warning" not in res.stderr, res.stderr
    assert latent_files(out) == latent_files(base)  # byte-stable, index included


def _one_clear_line(res: subprocess.CompletedProcess, shard: Path) -> str:
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(errors) == 1, res.stderr
    assert str(shard) in errors[0] and "dvc repro invert" in errors[0], errors[0]
    return errors[0]


def test_truncated_shard_read_by_a_stage_is_one_clear_error(base, tmp_path):
    out = copy_of(base, tmp_path)
    shard = out / "latents" / "train" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # lost its tail (and footer)
    line = _one_clear_line(_stage("schedule", tiny_params(), out, tmp_path), shard)
    assert "Parquet magic bytes not found" in line


def test_damaged_page_read_by_a_stage_is_one_clear_error(base, tmp_path):
    """The case that used to end in a bare `OSError: could not verify page integrity` traceback."""
    out = copy_of(base, tmp_path)
    shard = out / "latents" / "train" / "shard-00000.parquet"
    md = pq.ParquetFile(shard).metadata.row_group(0)
    col = next(md.column(c) for c in range(md.num_columns) if md.column(c).path_in_schema.startswith("image"))
    data = bytearray(shard.read_bytes())
    at = col.data_page_offset + 64  # inside the `image` column's data page, which `schedule` reads
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    shard.write_bytes(bytes(data))
    line = _one_clear_line(_stage("schedule", tiny_params(), out, tmp_path), shard)
    assert "could not verify page integrity" in line


# ------------------------------------------------------------------------ library level: what is in the key
def _png_items(folder: Path, n: int = 4) -> list[tuple[str, str]]:
    random_folder(folder, n, seed=2)
    return [(f"{i:03d}", str(folder / f"img{i}.png")) for i in range(n)]


@pytest.mark.parametrize("change", ["reconstruct", "weights", "code_version"])
def test_changed_setting_model_or_code_reinverts(small_model, tmp_path, monkeypatch, change):
    items = _png_items(tmp_path / "png")
    cfg = BulkInversion(n_inv_steps=3, n_train_steps=3, cache_source=False, shard_size=2, batch_size=2)
    kw = dict(progress=False)
    bulk.invert_to_shards(small_model, items, tmp_path / "a", cfg, {"split": "x"}, **kw)
    model, cfg2 = small_model, replace(cfg, timings={"images": 0, "seconds": 0.0, "passes": 0})
    if change == "reconstruct":
        cfg2 = replace(cfg2, reconstruct=True)
    elif change == "weights":  # same model id (a checkpoint folder retrained in place), other weights
        model = copy.deepcopy(small_model)
        with torch.no_grad():
            next(model.unet.parameters()).add_(0.05)
    else:
        monkeypatch.setattr(bulk, "CODE_VERSION", bulk.CODE_VERSION + 1)
    with pytest.warns(UserWarning, match="other metadata"):
        bulk.invert_to_shards(model, items, tmp_path / "a", cfg2, {"split": "x"}, **kw)
    assert cfg2.timings["images"] == len(items)  # every shard recomputed
    bulk.invert_to_shards(model, items, tmp_path / "b", replace(cfg2), {"split": "x"}, **kw)
    a, b = LatentStore(tmp_path / "a"), LatentStore(tmp_path / "b")
    assert a.columns == b.columns and ("recon" in a.columns) == (change == "reconstruct")
    assert all(torch.equal(a.get(a.ids, [c])[c], b.get(b.ids, [c])[c]) for c in a.columns)

    # and nothing changed since: every shard kept (full check passed), nothing inverted
    again = replace(cfg2, timings={"images": 0, "seconds": 0.0, "passes": 0})
    bulk.invert_to_shards(model, items, tmp_path / "a", again, {"split": "x"}, **kw)
    assert again.timings["images"] == 0
