"""Directions: shapes, parameter count of the official f_t, safetensors + JSON round trip, fit checks."""

import json

import pytest
import torch

from asyrp.api import new_direction
from asyrp.core.directions import (
    DirectionConfig,
    OfficialDirection,
    build_direction,
    check_compatible,
    load_direction,
    save_direction,
)


def test_official_parameter_count():
    """About 0.79 M parameters for C = 512 with the 512-d DDPM time embedding (design notes)."""
    assert sum(p.numel() for p in OfficialDirection(512, 512).parameters()) == 788_992


@pytest.mark.parametrize("kind", ["official", "concat", "delta_h_t", "global"])
def test_round_trip(tmp_path, small_model, kind):
    d, cfg = new_direction(small_model, "a shape", "a red shape", t_edit=500, t_boost=200, kind=kind, seed=3)
    for p in d.parameters():  # non-trivial values for the table kinds too
        torch.nn.init.normal_(p, std=0.1)
    stem = save_direction(d, cfg, tmp_path / "red")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["red.json", "red.safetensors"]
    d2, cfg2 = load_direction(stem)
    assert cfg2 == cfg
    h = torch.randn(2, *cfg.h_shape)
    emb = torch.randn(2, cfg.temb_channels)
    for t in (999, 613, 500):
        assert torch.equal(d(h, t, emb), d2(h, t, emb))
    assert d(h, 999, emb).shape == h.shape


def test_seeded_init_is_deterministic(small_model):
    a, _ = new_direction(small_model, "x", "y", t_edit=500, seed=7)
    b, _ = new_direction(small_model, "x", "y", t_edit=500, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_load_rejects_mismatched_weights(tmp_path, small_model):
    d, cfg = new_direction(small_model, "a", "b", t_edit=500)
    stem = save_direction(d, cfg, tmp_path / "d")
    data = json.loads((tmp_path / "d.json").read_text())
    data["h_shape"] = [32, 8, 8]
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="shape"):
        load_direction(stem)
    data["kind"] = "global"
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing"):
        load_direction(stem)
    with pytest.raises(FileNotFoundError, match="json"):
        load_direction(tmp_path / "nothing")


def test_check_compatible(small_model):
    cfg = DirectionConfig(
        "official",
        (512, 8, 8),
        512,
        model_id="google/ddpm-celebahq-256",
        source="face",
        target="smiling face",
    )
    with pytest.raises(ValueError, match=r"h-space \(512, 8, 8\).*\(64, 8, 8\)"):
        check_compatible(cfg, small_model.unet.h_shape(), small_model.unet.temb_channels, "offline:small")
    ok = DirectionConfig("official", (64, 8, 8), 128, model_id="offline:small")
    check_compatible(ok, (64, 8, 8), 128, "offline:small")
    with pytest.raises(ValueError, match="trained on model"):
        check_compatible(ok, (64, 8, 8), 128, "google/ddpm-church-256")


def test_unknown_kind_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="unknown direction kind"):
        build_direction(DirectionConfig("mlp", (8, 2, 2), 8))
    with pytest.raises(ValueError, match="timesteps"):
        build_direction(DirectionConfig("delta_h_t", (8, 2, 2), 8))
    with pytest.raises(ValueError, match="unknown keys"):
        DirectionConfig.from_json(json.dumps({"kind": "global", "h_shape": [8, 2, 2], "temb_channels": 8, "x": 1}))


def test_saved_direction_files_are_byte_stable(tmp_path):
    """Twenty saves of one direction give one sha256 (safetensors orders its metadata map randomly per call)."""
    import hashlib

    from asyrp.core.directions import DirectionConfig, build_direction, load_direction, save_direction

    cfg = DirectionConfig(kind="official", h_shape=(32, 2, 2), temb_channels=16)
    d = build_direction(cfg)
    files = [save_direction(d, cfg, tmp_path / f"d{i}").with_suffix(".safetensors") for i in range(20)]
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert len(digests) == 1
    loaded, _ = load_direction(tmp_path / "d0")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), d.state_dict().values(), strict=True))
