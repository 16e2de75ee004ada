"""Pipeline stages outside DVC: kill -9 and resume of `invert`, clean CLI errors, bad images in `download`."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.params import load_params, params_from_dict

from .pipeline_util import ROOT, plumbing_params, tool_env

pytestmark = pytest.mark.slow


def small_params(tmp_path: Path, **inversion) -> Path:
    """params.yaml of the repo with the offline profile shrunk further (fast stage runs)."""
    data = plumbing_params()
    over = data["profiles"]["offline"]["overrides"]
    over["inversion"].update(
        {"n_train_images": 12, "n_test_images": 4, "shard_size": 4, "batch_size": 2, "n_inv_steps": 10, **inversion}
    )
    over["train"]["n_train_steps"] = 10
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def stage(name: str, params: Path, out: Path, *args, check=True, **kw):
    cmd = [sys.executable, "-m", f"pipeline.stages.{name}", *args, "--params", str(params), "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=tool_env(), capture_output=True, text=True, check=check, **kw)


def table(folder: Path) -> dict:
    """Every row of every shard, by id: {id: {column: array}}."""
    rows = {}
    for f in sorted(folder.glob("shard-*.parquet")):
        t = pq.read_table(f).to_pylist()
        for r in t:
            assert r["id"] not in rows, f"duplicate row {r['id']}"
            rows[r["id"]] = r
    return rows


def test_invert_killed_with_sigkill_resumes_identically(tmp_path):
    params = small_params(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    for o in (ref, out):
        stage("download", params, o)
    stage("invert", params, ref)
    cmd = [sys.executable, "-m", "pipeline.stages.invert", "--params", str(params), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "latents" / "train").glob("shard-*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, "invert ended before its first shard"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "latents" / "train").glob("shard-*.parquet")))
    assert done < 3, "the kill came too late to test a resume"
    assert not (out / "latents" / "train" / "_index.json").exists()
    stage("invert", params, out)
    assert not list(out.glob("latents/*/*.tmp-*"))
    for split in ("train", "test"):
        a, b = table(ref / "latents" / split), table(out / "latents" / split)
        assert sorted(a) == sorted(b) and len(a) == (12 if split == "train" else 4)
        for i in a:
            for col in a[i]:
                assert np.array_equal(np.asarray(a[i][col]), np.asarray(b[i][col])), (split, i, col)


def test_cli_errors_are_one_clear_line(tmp_path):
    for key, value, expect in (
        ("train", {"lr": -1}, "train.lr: must be > 0"),
        ("attributes", ["red", "purple"], "purple"),
    ):
        bad = plumbing_params()
        bad[key] = {**bad[key], **value} if isinstance(value, dict) else value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(bad))
        res = stage("train", path, tmp_path / "o", "red", check=False)
        assert res.returncode == 2 and expect in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = stage("edit", small_params(tmp_path), tmp_path / "o", "red", check=False)  # nothing trained yet
    assert res.returncode == 2 and "direction" in res.stderr and "Traceback" not in res.stderr


def test_download_counts_bad_images_and_goes_on(tmp_path):
    from pipeline.stages import download

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(raw / f"ok{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(raw / "gray.png")
    (raw / "empty.jpg").write_bytes(b"")
    (raw / "text.png").write_text("not an image")
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(raw / "tiny.png")
    data = plumbing_params()
    data["profiles"]["offline"]["dataset"] = {"source": "folder", "path": str(raw)}
    over = data["profiles"]["offline"]["overrides"]["inversion"]
    over.update(n_train_images=4, n_test_images=2)
    summary = download.run(params_from_dict(data), out=tmp_path / "out")
    report = yaml.safe_load((tmp_path / "out" / "data" / "report.json").read_text())
    assert summary["images"] == 6 and report["converted"] == 1 and report["skipped"] == 3
    assert sum(report["skipped_reasons"].values()) == 3
    assert len(list((tmp_path / "out" / "data" / "images").glob("*.png"))) == 6


def test_shipped_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.profile == "toy" and p.attributes == ["red", "circle", "large"]
    shutil.rmtree(ROOT / "outputs" / "nothing", ignore_errors=True)
