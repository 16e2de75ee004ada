"""Segmenters for SC: each architecture runs offline with random weights at its real input and output shapes;
checkpoints load safely (weights_only / safetensors); missing ones fail with one clear error."""

import json
import pickle
import warnings

import pytest
import torch

from asyrp.models.segment import (
    CELEBAMASK_LABELS,
    BiSeNet,
    SegmenterLoadError,
    file_sha256,
    load_segmenter,
)


@pytest.fixture(scope="module")
def bisenet_file(tmp_path_factory):
    """A checkpoint laid out like 79999_iter.pth (random weights): a plain state dict of BiSeNet(19)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "79999_iter.pth"
    torch.save(BiSeNet(19).state_dict(), path)
    return path


def test_bisenet_has_the_face_parsing_layout():
    net = BiSeNet(19)
    keys = net.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"cp", "ffm", "conv_out", "conv_out16", "conv_out32"}
    assert "cp.resnet.layer4.1.bn2.running_var" in keys and "cp.resnet.layer2.0.downsample.0.weight" in keys
    assert not any(k.startswith("cp.resnet.fc") for k in keys)  # no classifier, like the checkpoint
    n_float = sum(v.numel() for v in net.state_dict().values() if v.is_floating_point())
    assert n_float * 4 / 2**20 == pytest.approx(50.8, abs=0.05)  # 79999_iter.pth holds ~50.8 MiB of float32
    assert len(CELEBAMASK_LABELS) == 19


def test_bisenet_random_weights_at_512(bisenet_file):
    seg = load_segmenter("offline:bisenet", input_size=512)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    logits = seg.logits(x)
    assert logits.shape == (1, 19, 512, 512)  # face-parsing.PyTorch's test.py: 512 x 512 in, same out
    out, out16, out32 = seg.net(seg.preprocess(x)[:, :, :64, :64], aux=True)
    assert out.shape == out16.shape == out32.shape == (1, 19, 64, 64)
    assert not seg.is_pretrained and "RANDOM" in seg.note


@pytest.mark.parametrize(
    "sid, k, stride", [("offline:bisenet", 19, 1), ("offline:segformer", 150, 4), ("offline:upernet", 150, 1)]
)
def test_offline_segmenters_shapes(sid, k, stride):
    seg = load_segmenter(sid, input_size=64)
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    assert seg.logits(x).shape == (2, k, 64 // stride, 64 // stride)
    labels = seg(x)
    assert labels.shape == (2, 40, 40) and labels.dtype == torch.int64 and labels.max() < k
    assert seg.num_classes == k and not seg.is_pretrained
    assert torch.equal(load_segmenter(sid, input_size=64)(x), labels)  # seeded: the same random weights


def test_bisenet_checkpoint_loads_with_weights_only(bisenet_file, tmp_path):
    seg = load_segmenter(f"bisenet:{bisenet_file}")
    assert seg.is_pretrained and seg.input_size == 512 and seg.sha256 == file_sha256(bisenet_file)
    ref = torch.load(bisenet_file, weights_only=True)
    assert all(torch.equal(seg.net.state_dict()[k], v) for k, v in ref.items())
    # saved from DataParallel ("module." prefix), without BatchNorm's num_batches_tracked (old PyTorch)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({f"module.{k}": v for k, v in ref.items() if "num_batches_tracked" not in k}, wrapped)
    assert load_segmenter(f"bisenet:{wrapped}", input_size=64).sha256 == file_sha256(wrapped)
    assert load_segmenter(f"bisenet:{bisenet_file}", sha256=seg.sha256.upper(), input_size=64)


def test_bisenet_rejects_wrong_or_unsafe_files(bisenet_file, tmp_path):
    with pytest.raises(SegmenterLoadError, match="sha256 is .* expected 0{64}"):
        load_segmenter(f"bisenet:{bisenet_file}", sha256="0" * 64)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(print))  # arbitrary code objects are refused by weights_only
    with pytest.raises(SegmenterLoadError, match="weights_only"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch notes the pickle protocol
        load_segmenter(f"bisenet:{evil}")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(SegmenterLoadError, match="not a 19-class face-parsing BiSeNet checkpoint"):
        load_segmenter(f"bisenet:{other}")


def test_missing_bisenet_checkpoint_is_one_clear_error(tmp_path):
    missing = tmp_path / "pretrained" / "79999_iter.pth"
    with pytest.raises(SegmenterLoadError) as info:
        load_segmenter(f"bisenet:{missing}")
    msg = str(info.value)
    assert str(missing) in msg and "not found" in msg
    assert "zllrunning/face-parsing.PyTorch" in msg and "154JgKpzCPW82qINcVieuPH3fZ2e0P812" in msg


def test_missing_hub_segmenter_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SegmenterLoadError) as info:
        load_segmenter("hf:nvidia/segformer-b0-finetuned-ade-512-512")
    msg = str(info.value)
    assert "'nvidia/segformer-b0-finetuned-ade-512-512'" in msg and "hf download" in msg
    with pytest.raises(SegmenterLoadError, match="unknown kind 'mmseg'"):
        load_segmenter("mmseg:foo")
    with pytest.raises(SegmenterLoadError, match="unknown offline segmenter"):
        load_segmenter("offline:deeplab")


def test_transformers_checkpoint_from_a_local_folder(tmp_path):
    """hf:<folder>: save_pretrained writes safetensors; the processor config sets the input size and stats."""
    seg = load_segmenter("offline:segformer")
    folder = tmp_path / "segformer-ade"
    seg.net.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 96, "width": 96}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    loaded = load_segmenter(f"hf:{folder}")
    assert loaded.is_pretrained and loaded.input_size == 96 and loaded.num_classes == 150
    assert torch.allclose(loaded.std.flatten(), torch.tensor([0.25] * 3))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loaded(x).shape == (1, 32, 32)
