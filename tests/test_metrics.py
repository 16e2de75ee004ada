"""App. K metrics: S_dir (Eq. 17) batched, SC pixel accuracy on label maps with known accuracy, intervals,
and the evaluate stage writing SC next to S_dir and LPIPS."""

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from asyrp.core.losses import directional_cos
from asyrp.data.latents import run_sharded
from asyrp.metrics import (
    directional_similarity,
    mean_ci,
    pixel_accuracy,
    segmentation_consistency,
    wilson_interval,
)
from pipeline.params import params_from_dict

from .pipeline_util import ROOT

# --- pixel accuracy ------------------------------------------------------------------------------------------


def test_pixel_accuracy_on_maps_with_known_accuracy():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 19, (3, 10, 10), generator=g)
    b = a.clone()
    flat = b.view(3, -1)
    flat[0, :23] = (flat[0, :23] + 1) % 19  # 23 of 100 pixels differ
    flat[2] = (flat[2] + 5) % 19  # every pixel differs
    acc = pixel_accuracy(a, b)
    assert acc.dtype == torch.float64 and acc.tolist() == pytest.approx([0.77, 1.0, 0.0])
    assert pixel_accuracy(a[0], a[0]).tolist() == [1.0]  # one (H, W) map


def test_pixel_accuracy_ignore_index_leaves_out_shared_background():
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    b = a.clone()
    a[0, 0, :] = 1  # 4 face pixels in a; b has them as background
    b[0, 1, :2] = 2  # 2 pixels labelled 2 in b only
    # 16 pixels, 6 disagree -> 10/16; ignoring label 0 where both are 0: 10 shared zeros drop out -> 0/6
    assert pixel_accuracy(a, b).item() == pytest.approx(10 / 16)
    assert pixel_accuracy(a, b, ignore_index=0).item() == pytest.approx(0.0)
    assert math.isnan(pixel_accuracy(b * 0, b * 0, ignore_index=0).item())


def test_pixel_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_accuracy(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


class ThresholdSegmenter(torch.nn.Module):
    """Label 1 where the red channel is positive: a segmenter whose maps we can predict."""

    def forward(self, x):
        return (x[:, 0] > 0).long()


def test_segmentation_consistency_counts_changed_pixels():
    ref = -torch.ones(2, 3, 8, 8)
    edit = ref.clone()
    edit[0, 0, :2, :] = 1.0  # 16 of 64 pixels change label
    sc = segmentation_consistency(ThresholdSegmenter(), ref, edit, batch_size=1)
    assert sc.tolist() == pytest.approx([48 / 64, 1.0])


# --- intervals -------------------------------------------------------------------------------------------------


def test_mean_ci_student_t():
    m = mean_ci(torch.tensor([1.0, 2.0, 3.0]))
    assert m["mean"] == 2.0 and m["n"] == 3
    assert m["ci95"] == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert math.isnan(mean_ci([5.0])["ci95"])


def test_wilson_interval():
    lo, hi = wilson_interval(12, 16)
    assert lo == pytest.approx(0.5050, abs=1e-4) and hi == pytest.approx(0.8982, abs=1e-4)
    assert wilson_interval(4, 16) == pytest.approx(tuple(1 - v for v in reversed(wilson_interval(12, 16))))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


# --- S_dir -----------------------------------------------------------------------------------------------------


class LinearClip(torch.nn.Module):
    """encode_image = normalise(W @ mean colour); text_direction fixed: S_dir computable by hand."""

    def __init__(self):
        super().__init__()
        self.w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
        self.calls = 0

    device = torch.device("cpu")

    def encode_image(self, x):
        self.calls += 1
        return F.normalize(x.mean(dim=(2, 3)) @ self.w.T, dim=-1)

    def text_direction(self, source, target, templates=None):
        return F.normalize(torch.tensor([1.0, -1.0, 0.0, 0.0]), dim=0)


def test_directional_similarity_matches_eq17_and_batches():
    g = torch.Generator().manual_seed(0)
    orig, edit = torch.rand(5, 3, 4, 4, generator=g) * 2 - 1, torch.rand(5, 3, 4, 4, generator=g) * 2 - 1
    clip = LinearClip()
    s = directional_similarity(clip, orig, edit, "a", "b", batch_size=2)
    d_i = clip.encode_image(edit) - clip.encode_image(orig)
    expect = (d_i @ clip.text_direction("a", "b")) / d_i.norm(dim=-1)
    assert s.shape == (5,) and torch.allclose(s, expect, atol=1e-6)
    clip.calls = 0
    assert torch.allclose(directional_similarity(clip, orig, edit, "a", "b", batch_size=32), s, atol=1e-6)
    assert clip.calls == 2  # one batch each for the originals and the edits


def test_directional_similarity_with_tiny_clip_equals_the_training_cosine(tiny_clip, images):
    edited = images.flip(-1)
    s = directional_similarity(tiny_clip, images, edited, "a shape", "a red shape", batch_size=3)
    text_dir = F.normalize(tiny_clip.encode_text(["a red shape"])[0] - tiny_clip.encode_text(["a shape"])[0], dim=0)
    ref = directional_cos(tiny_clip.encode_image(edited), tiny_clip.encode_image(images), text_dir)
    assert torch.allclose(s, ref, atol=1e-5) and ((s >= -1) & (s <= 1)).all()
    with pytest.raises(ValueError, match="differ in shape"):
        directional_similarity(tiny_clip, images, edited[:2], "a", "b")


# --- the evaluate stage ----------------------------------------------------------------------------------------


def fake_outputs(root: Path, attrs=("red", "blue"), n: int = 4, size: int = 32) -> Path:
    """A minimal outputs/ tree: a test latent store with images, and edits + reconstructions per attribute."""
    g = np.random.default_rng(0)
    ids = [f"{i:05d}" for i in range(n)]
    imgs = g.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    run_sharded(
        list(zip(ids, imgs, strict=True)),
        root / "latents" / "test",
        lambda batch: {"image": np.stack([a for _, a in batch])},
        shard_size=n,
        batch_size=n,
        metadata={"split": "test"},
        progress=False,
    )
    for a in attrs:
        edit = root / "attributes" / a / "edit"
        for sub, shift in (("images", 40), ("recon", 5)):
            (edit / sub).mkdir(parents=True, exist_ok=True)
            for i, im in zip(ids, imgs, strict=True):
                arr = np.clip(im.transpose(1, 2, 0).astype(int) + shift, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(edit / sub / f"{i}.png")
        (edit / "summary.json").write_text(json.dumps({"n_edited": n, "coefficient": 1.0}))
    return root


def offline_params(**evaluate):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["profile"], data["attributes"] = "offline", ["red", "blue"]
    data["profiles"]["offline"]["overrides"]["evaluate"].update(evaluate)
    return data


def run_evaluate(tmp_path, data):
    from pipeline.stages import evaluate

    out = fake_outputs(tmp_path / "outputs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-backbone LPIPS warning
        evaluate.run(params_from_dict(data), "red", out)
    folder = out / "attributes" / "red" / "evaluate"
    with open(folder / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((folder / "metrics.json").read_text()), rows


def test_evaluate_stage_writes_sc_beside_s_dir_and_lpips(tmp_path):
    m, rows = run_evaluate(tmp_path, offline_params())
    for key in ("s_dir", "sc", "sc_recon", "lpips_edit", "lpips_recon"):
        assert m[key]["n"] == 4 and math.isfinite(m[key]["mean"]), key
    assert 0 <= m["sc"]["mean"] <= 1 and m["sc_reference"] == "original"
    assert m["segmenter_is_pretrained"] is False and "RANDOM weights" in m["segmenter"]
    assert m["segmenter_id"] == "offline:bisenet" and m["lpips_is_paper_metric"] is False
    assert list(rows[0]) == ["id", "s_dir", "sc", "sc_recon", "lpips_edit", "lpips_recon"] and len(rows) == 4


def test_evaluate_stage_sc_against_the_reconstruction_or_off(tmp_path):
    m, rows = run_evaluate(tmp_path / "recon", offline_params(sc={"reference": "recon"}, lpips=False))
    assert m["sc_reference"] == "recon" and "sc_recon" not in m and "lpips_edit" not in m
    assert list(rows[0]) == ["id", "s_dir", "sc"]
    data = offline_params(lpips=False)
    data["profiles"]["offline"]["segmenter"] = None
    m, rows = run_evaluate(tmp_path / "none", data)
    assert "sc" not in m and list(rows[0]) == ["id", "s_dir"]
