"""h-space split: up(down(x)) is the plain U-Net forward, for several architectures and batch sizes."""

import pytest
import torch
from diffusers import UNet2DModel

from asyrp.core.hspace import HUNet, check_image_batch
from asyrp.models.diffusion import SMALL_UNET_CONFIG, build_unet

CONFIGS = {
    "small-attn": SMALL_UNET_CONFIG,
    "no-attention": dict(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ),
    "learned-variance": dict(
        sample_size=16,
        out_channels=6,
        block_out_channels=(16, 32),
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "fourier-skip": dict(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        time_embedding_type="fourier",
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_split_equals_plain_forward(name, batch):
    unet = build_unet(CONFIGS[name], seed=1)
    model = HUNet(unet)
    size = unet.config.sample_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    for t in (1, 417, 999):  # not 0: the fourier embedding divides by t (NaN in diffusers too)
        ref = unet(x, t).sample[:, :3]
        with torch.no_grad():
            state = model.down(x, t)
            assert state.h.shape[1] == unet.config.block_out_channels[-1]
            assert torch.allclose(model.up(state), ref, atol=1e-5)
            eps, eps_zero = model.eps_pair(state, torch.zeros_like(state.h))  # delta_h = 0
            assert torch.allclose(eps, ref, atol=1e-5) and torch.allclose(eps_zero, ref, atol=1e-5)


def test_eps_pair_is_two_up_passes(small_model):
    m = small_model.unet
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = m.down(x, 600)
        delta = torch.randn_like(state.h)
        for batched in (None, True, False):  # CPU default: in sequence; batched: the accelerator default
            eps, eps_edit = m.eps_pair(state, delta, batched=batched)
            assert torch.allclose(eps, m.up(state), atol=1e-5)
            assert torch.allclose(eps_edit, m.up(state, state.h + delta), atol=1e-5)
            assert (eps_edit - eps).abs().mean() > 1e-3


def test_shapes(small_model):
    assert small_model.unet.h_shape() == (64, 8, 8)
    assert small_model.unet.temb_channels == 128
    assert not small_model.unet.learned_variance


def test_frozen():
    m = HUNet(UNet2DModel(**CONFIGS["no-attention"]))
    assert all(not p.requires_grad for p in m.parameters())


def test_check_image_batch(small_model):
    ok = torch.zeros(1, 3, 32, 32)
    check_image_batch(ok, small_model.unet)
    for bad, msg in [
        (torch.zeros(3, 32, 32), "shape"),
        (torch.zeros(1, 1, 32, 32), "channels"),
        (torch.zeros(1, 3, 64, 64), "pixels"),
        (torch.full((1, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_image_batch(bad, small_model.unet)
