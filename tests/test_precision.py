"""CPU bf16 autocast: the choice (auto / on / off, a profile's dtype), HUNet.precision, float32 at the seams
(eps, h, temb), f_t training under it, and the shard key that records it."""

import pytest
import torch

from asyrp.core import precision
from asyrp.core.precision import autocast_dtype, resolve_bf16


def test_choices_and_errors(monkeypatch):
    assert resolve_bf16("on") and not resolve_bf16("off") and resolve_bf16(True)
    assert not resolve_bf16("auto", "cuda")  # CUDA callers choose their dtype explicitly
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert resolve_bf16("auto") and autocast_dtype("auto") is torch.bfloat16
    monkeypatch.setenv("ASYRP_CPU_BF16", "0")
    assert not resolve_bf16("auto") and autocast_dtype("auto") is None
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    monkeypatch.delenv("ASYRP_CPU_BF16")
    assert autocast_dtype("auto") is None and autocast_dtype("float32") is None
    assert autocast_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="bf16 must be auto, on or off"):
        resolve_bf16("yes")
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        autocast_dtype("fp16")


def test_precision_switches_and_restores_and_seams_stay_float32(small_model):
    unet = small_model.unet
    x = torch.randn(2, 3, 32, 32)
    ref = unet(x, 400)
    assert unet.compute_dtype is torch.float32
    with unet.precision(torch.bfloat16):
        assert unet.compute_dtype is torch.bfloat16
        state = unet.down(x, 400)
        eps = unet.up(state)
        assert state.h.dtype == state.emb.dtype == eps.dtype == torch.float32  # f_t and DDIM see float32
        assert state.res_samples[-1].dtype == torch.bfloat16  # the skips stay in the compute dtype
    assert unet.compute_dtype is torch.float32 and torch.equal(unet(x, 400), ref)  # restored, bit-identical
    rel = ((eps - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05, rel  # bf16 really ran, and stays close
    with unet.precision(torch.float16):  # CPU float16 autocast is not offered: float32
        assert unet.compute_dtype is torch.float32


def test_direction_trains_under_bf16_and_the_shard_key_records_it(small_model, tiny_clip):
    from asyrp.api import new_direction
    from asyrp.core.config import BulkInversion, LossConfig, TrainConfig
    from asyrp.core.losses import AsyrpLoss
    from asyrp.core.train import tensor_batches, train_direction
    from asyrp.data.bulk import inversion_metadata

    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = AsyrpLoss(tiny_clip, "a photo", "a sketch", LossConfig(templates="none"))
    direction, _ = new_direction(small_model, "a photo", "a sketch", 500, n_train_steps=4)
    before = [p.detach().clone() for p in direction.parameters()]
    cfg = TrainConfig(t_edit=500, n_train_steps=4)
    with small_model.unet.precision(torch.bfloat16):
        history = train_direction(small_model, direction, loss, tensor_batches(x_T, 2), cfg)
        key_bf16 = inversion_metadata(small_model, BulkInversion())["compute_dtype"]
    assert history and all(p.dtype == torch.float32 for p in direction.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, direction.parameters(), strict=True))
    assert (key_bf16, inversion_metadata(small_model, BulkInversion())["compute_dtype"]) == ("bfloat16", "float32")
