"""The paper's other architectures: guided-diffusion (iDDPM / ADM) and original-DDPM checkpoints as UNet2DModels.

Exactness: the same random state dict in the reference module and in the converted UNet2DModel gives the same
eps (guided-diffusion: the registry package ``guided-diffusion-sdk``, a copy of openai/guided-diffusion's
``unet.py``; DDPM: ``_DDPMReference`` below, written from the ``.ckpt`` layout of pytorch_diffusion's
``Model``). Numbers are checked on small configs of each family, the 256-px presets on the meta device.
"""

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from asyrp.core.hspace import HUNet
from asyrp.models.archs import (
    ADM_256,
    ADM_LIGHT_256,
    DDPM_256,
    PAPER_PRESETS,
    PRESETS,
    ChecksumMismatch,
    ConversionError,
    DDPMUNetConfig,
    GuidedUNetConfig,
    Preset,
    StateDictMismatch,
    build_unet,
    check_state_dict,
    convert_checkpoint,
    convert_state_dict,
    expected_shapes,
    get_preset,
    load_checkpoint,
    preset_for_file,
    presets_table,
    save_diffusers,
    sha256_file,
    unet_config,
)
from asyrp.models.diffusion import ModelLoadError, load_diffusion

TOL = 1e-4  # the bound on max |eps difference|; measured ~1e-7 here (float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: one thread is as fast, and does not fight the other tests for the 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """O(1) activations everywhere (the zero-initialised output convs too): weights ~ N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                is_norm_scale = name.endswith("weight")  # 1-d weights are GroupNorm scales
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if is_norm_scale else 0.0))
    return module.eval()


# --- guided-diffusion ---------------------------------------------------------------------------------------


def _guided_reference(cfg: GuidedUNetConfig, device="cpu"):
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")  # the package's nn.py uses torch.cuda.amp decorators deprecated in torch 2.4
        unet_mod = pytest.importorskip("guided_diffusion.unet", reason="test dependency guided-diffusion-sdk")
        return unet_mod.UNetModel(
            image_size=cfg.image_size,
            in_channels=cfg.in_channels,
            model_channels=cfg.model_channels,
            out_channels=cfg.out_channels,
            num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=cfg.attention_ds,
            dropout=0.0,
            channel_mult=cfg.mult,
            num_heads=cfg.num_heads,
            num_head_channels=cfg.num_head_channels,
            num_heads_upsample=cfg.num_heads_upsample,
            use_scale_shift_norm=cfg.use_scale_shift_norm,
            resblock_updown=cfg.resblock_updown,
            use_new_attention_order=cfg.use_new_attention_order,
        )


# Small members of the family, one feature switched per config. The first is the paper's AFHQ-dog /
# METFACES architecture (ADM_LIGHT_256) at 64 px with fewer channels: same 6 levels, same attention rate.
GUIDED_SMALL = {
    "adm-light-topology": dataclasses.replace(
        ADM_LIGHT_256,
        image_size=64,
        model_channels=32,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(4,),
        num_head_channels=16,
    ),
    "conv-resample-no-scale-shift-fixed-var": GuidedUNetConfig(
        image_size=32,
        model_channels=32,
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        channel_mult=(1, 2, 2),
        num_head_channels=16,
        use_scale_shift_norm=False,
        learn_sigma=False,
    ),
    "new-attention-order": GuidedUNetConfig(
        image_size=32,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        channel_mult=(1, 2, 4),
        num_head_channels=32,
        resblock_updown=True,
        use_new_attention_order=True,
    ),
    "fixed-heads-varying-widths": GuidedUNetConfig(
        image_size=32,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        channel_mult=(1, 2, 3),
        num_heads=2,
        num_heads_upsample=4,
    ),
}


@pytest.mark.parametrize("name", list(GUIDED_SMALL))
def test_guided_conversion_matches_reference(name):
    cfg = GUIDED_SMALL[name]
    ref = _randomize(_guided_reference(cfg), seed=1)
    state_dict = ref.state_dict()
    assert list(state_dict) == list(expected_shapes(cfg))  # the layout, key by key and in order
    check_state_dict(state_dict, cfg)
    unet = convert_checkpoint(state_dict, cfg)
    hunet = HUNet(unet)
    x, t = torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.tensor([3, 911])
    with torch.no_grad():
        out_ref, out = ref(x, t), unet(x, t).sample
        eps = hunet(x, t)
    assert out_ref.abs().mean() > 0.1  # the comparison is not trivially between near-zero outputs
    assert (out_ref - out).abs().max() < TOL
    assert (out_ref[:, :3] - eps).abs().max() < TOL
    # learned variance: the model outputs [eps, v]; HUNet hands the first in_channels on as eps
    assert unet.config.out_channels == (6 if cfg.learn_sigma else 3)
    assert hunet.learned_variance == cfg.learn_sigma


def test_reference_is_guided_diffusion_itself():
    """The package's UNetModel keeps openai/guided-diffusion's structure (not a re-implementation drift)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_mod = pytest.importorskip("guided_diffusion.unet", reason="test dependency guided-diffusion-sdk")
    for cls in ("UNetModel", "ResBlock", "AttentionBlock", "QKVAttention", "QKVAttentionLegacy"):
        assert hasattr(unet_mod, cls)


@pytest.mark.parametrize("arch", [ADM_LIGHT_256, ADM_256], ids=["adm-light-256", "adm-256"])
def test_guided_layout_at_paper_scale(arch):
    """The 256-px presets: reference keys/shapes = expected_shapes, converted dict loads strictly (meta device)."""
    ref = _guided_reference(arch, device="meta")
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == expected_shapes(arch)
    unet = build_unet(arch, device="meta")
    converted = convert_state_dict(ref.state_dict(), arch)
    assert unet.load_state_dict(converted, strict=True, assign=True)  # no missing / unexpected keys
    n_params = sum(p.numel() for p in ref.parameters())
    assert n_params == sum(p.numel() for p in unet.parameters())
    assert n_params == (93_563_910 if arch is ADM_LIGHT_256 else 552_814_086)


# --- original DDPM -----------------------------------------------------------------------------------------


def _ddpm_temb(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class _Res(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb, c_out)
        self.norm2, self.conv2 = _gn(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, temb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb_proj(nn.functional.silu(temb))[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Attn(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, c, hh * ww) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)  # (B, query, key)
        return x + self.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww))


class _Resample(nn.Module):
    def __init__(self, c: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1 if up else 0)

    def forward(self, x):
        if self.up:
            return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))


class _DDPMReference(nn.Module):
    """Ho et al.'s DDPM U-Net with the module names of the ``.ckpt`` files (pytorch_diffusion ``Model``)."""

    def __init__(self, cfg: DDPMUNetConfig):
        super().__init__()
        ch, n, temb = cfg.ch, len(cfg.ch_mult), 4 * cfg.ch
        self.cfg = cfg
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        res, in_mult, chans = cfg.resolution, (1, *cfg.ch_mult), []
        self.down = nn.ModuleList()
        for i in range(n):
            level = nn.Module()
            c_in, c_out = ch * in_mult[i], ch * cfg.ch_mult[i]
            level.block = nn.ModuleList(
                [_Res(c_in if j == 0 else c_out, c_out, temb) for j in range(cfg.num_res_blocks)]
            )
            level.attn = nn.ModuleList(
                [_Attn(c_out) for _ in range(cfg.num_res_blocks)] if res in cfg.attn_resolutions else []
            )
            if i != n - 1:
                level.downsample = _Resample(c_out, up=False)
                res //= 2
            self.down.append(level)
            chans.append(c_out)
        c = chans[-1]
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = _Res(c, c, temb), _Attn(c), _Res(c, c, temb)
        ups = []
        for i in reversed(range(n)):
            level, c_out = nn.Module(), ch * cfg.ch_mult[i]
            blocks = []
            for j in range(cfg.num_res_blocks + 1):
                skip = ch * (in_mult[i] if j == cfg.num_res_blocks else cfg.ch_mult[i])
                blocks.append(_Res(c + skip, c_out, temb))
                c = c_out
            level.block = nn.ModuleList(blocks)
            level.attn = nn.ModuleList(
                [_Attn(c_out) for _ in range(cfg.num_res_blocks + 1)] if res in cfg.attn_resolutions else []
            )
            if i != 0:
                level.upsample = _Resample(c_out, up=True)
                res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = _gn(c), nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, x, t):
        n, nrb = len(self.cfg.ch_mult), self.cfg.num_res_blocks
        temb = self.temb.dense[1](nn.functional.silu(self.temb.dense[0](_ddpm_temb(t, self.cfg.ch))))
        hs = [self.conv_in(x)]
        for i in range(n):
            for j in range(nrb):
                h = self.down[i].block[j](hs[-1], temb)
                hs.append(self.down[i].attn[j](h) if len(self.down[i].attn) else h)
            if i != n - 1:
                hs.append(self.down[i].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(n)):
            for j in range(nrb + 1):
                h = self.up[i].block[j](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i].attn):
                    h = self.up[i].attn[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


DDPM_SMALL = DDPMUNetConfig(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,))


def test_ddpm_conversion_matches_reference():
    ref = _randomize(_DDPMReference(DDPM_SMALL), seed=2)
    state_dict = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == expected_shapes(DDPM_SMALL)
    unet = convert_checkpoint(state_dict, DDPM_SMALL)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 640])
    with torch.no_grad():
        out_ref, eps = ref(x, t), HUNet(unet)(x, t)
    assert out_ref.abs().mean() > 0.1
    assert (out_ref - eps).abs().max() < TOL
    assert not HUNet(unet).learned_variance


def test_ddpm_layout_at_paper_scale():
    """The 256-px DDPM (CelebA-HQ, church, bedroom): the .ckpt layout and a strict load, on the meta device."""
    with torch.device("meta"):
        ref = _DDPMReference(DDPM_256)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == expected_shapes(DDPM_256)
    unet = build_unet(DDPM_256, device="meta")
    assert unet.load_state_dict(convert_state_dict(ref.state_dict(), DDPM_256), strict=True, assign=True)
    assert sum(p.numel() for p in unet.parameters()) == 113_673_219  # google/ddpm-*-256 count


# --- h-space on every architecture ------------------------------------------------------------------------


ARCHES = {
    "guided-adm-light": GUIDED_SMALL["adm-light-topology"],
    "guided-fixed-heads": GUIDED_SMALL["fixed-heads-varying-widths"],
    "ddpm": DDPM_SMALL,
}


@pytest.mark.parametrize("name", list(ARCHES))
def test_hspace_identity_and_split(name):
    """delta_h = 0 gives the plain output; a non-zero delta_h changes eps; up(down(x)) = the U-Net."""
    arch = ARCHES[name]
    unet = build_unet(arch, seed=5)
    _randomize(unet, seed=5)
    hunet = HUNet(unet)
    size = arch.image_size
    x, t = torch.randn(2, 3, size, size), torch.tensor([250, 750])
    with torch.no_grad():
        state = hunet.down(x, t)
        eps, eps_edit = hunet.eps_pair(state, torch.zeros_like(state.h))
        plain = hunet(x, t)
        _, moved = hunet.eps_pair(state, torch.randn_like(state.h))
        full = unet(x, t).sample[:, :3]
    assert torch.allclose(eps, plain, atol=1e-5) and torch.allclose(eps_edit, plain, atol=1e-5)
    assert torch.allclose(plain, full, atol=1e-5)
    assert (moved - plain).abs().max() > 1e-3
    assert state.h.shape[1] == arch.h_channels


@pytest.mark.parametrize(
    ("arch", "h_shape", "temb"),
    [(ADM_LIGHT_256, (512, 8, 8), 512), (ADM_256, (1024, 8, 8), 1024), (DDPM_256, (512, 8, 8), 512)],
    ids=["adm-light-256 (AFHQ-dog, METFACES)", "adm-256", "ddpm-256 (CelebA-HQ, church, bedroom)"],
)
def test_bottleneck_shapes_at_paper_scale(arch, h_shape, temb):
    """C = 4 x model channels: 512 x 8 x 8 for the paper's 256-px iDDPM / ADM / DDPM models (meta dry run)."""
    hunet = HUNet(build_unet(arch, device="meta"))
    assert hunet.h_shape() == h_shape and hunet.h_channels == h_shape[0] == arch.h_channels
    assert hunet.temb_channels == temb
    assert hunet.learned_variance == isinstance(arch, GuidedUNetConfig)


# --- presets ------------------------------------------------------------------------------------------------


def test_presets_cover_the_paper_and_build():
    assert set(PAPER_PRESETS) >= {"iddpm-afhq-dog-256", "adm-p2-metfaces-256", "ddpm-celebahq-256"}
    assert get_preset("iddpm-afhq-dog-256").arch is ADM_LIGHT_256 is get_preset("adm-p2-metfaces-256").arch
    names = [f for p in PRESETS.values() for f in p.filenames]
    assert len(names) == len(set(names))  # a file name picks one preset
    for p in PRESETS.values():
        assert p.url.startswith("https://") and p.source and p.image_size == 256
        assert unet_config(p.arch)["sample_size"] == 256
    assert preset_for_file("some/dir/metface_p2.pt").name == "adm-p2-metfaces-256"
    assert preset_for_file("model-4432000.ckpt").name == "ddpm-church-256"
    assert preset_for_file("mine.pt") is None
    table = presets_table()
    assert table.count("\n") == len(PRESETS) + 1
    assert "| `adm-p2-metfaces-256` | guided-diffusion 128ch | 512x8x8" in table
    with pytest.raises(KeyError, match="did you mean 'iddpm-afhq-dog-256'"):
        get_preset("iddpm-afhq-dog")


# --- loading: files, checksums, mismatches -----------------------------------------------------------------

SMALL_PRESET = Preset("test-guided-small", GUIDED_SMALL["adm-light-topology"], "test", ("small.pt",), "https://x", "t")


@pytest.fixture(scope="module")
def guided_file(tmp_path_factory):
    """A small guided-diffusion state dict (random) saved as a .pt file."""
    g = torch.Generator().manual_seed(7)
    shapes = expected_shapes(SMALL_PRESET.arch)
    ref_sd = {k: torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:])) for k, s in shapes.items()}
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(ref_sd, path)
    return path, ref_sd


def test_load_diffusion_dispatches_checkpoint_files(guided_file):
    path, state_dict = guided_file
    model = load_diffusion(str(path), preset=SMALL_PRESET, sha256=sha256_file(path))
    direct = convert_checkpoint(state_dict, SMALL_PRESET.arch)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.unet(x, 400), HUNet(direct)(x, 400))
    assert model.image_size == 64 and model.num_train_timesteps == 1000
    ref = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(model.alphas_cumprod, ref, atol=1e-6)


def test_sha256_pin_is_verified(guided_file):
    path, _ = guided_file
    with pytest.raises(ChecksumMismatch, match="sha256 is [0-9a-f]{64}, but 0{64} is pinned"):
        load_checkpoint(path, SMALL_PRESET, sha256="0" * 64)
    assert load_checkpoint(path, SMALL_PRESET, sha256=sha256_file(path).upper()).sha256 == sha256_file(path)


def test_mismatched_state_dict_lists_every_difference(guided_file):
    _, good = guided_file
    bad = dict(good)
    del bad["middle_block.1.qkv.weight"]
    bad["extra.weight"] = torch.zeros(3)
    bad["out.2.weight"] = torch.zeros(3, 32, 3, 3)  # fixed variance in a learned-variance preset
    with pytest.raises(StateDictMismatch) as info:
        check_state_dict(bad, SMALL_PRESET.arch, what="bad.pt")
    msg, err = str(info.value), info.value
    assert "bad.pt does not match guided-diffusion UNetModel 64px" in msg
    assert "1 missing keys: middle_block.1.qkv.weight" in msg and "1 unexpected keys: extra.weight" in msg
    assert "out.2.weight: checkpoint (3, 32, 3, 3) vs preset (6, 32, 3, 3)" in msg
    assert "fixed-variance model (learn_sigma=False)" in msg
    assert err.missing == ["middle_block.1.qkv.weight"] and err.unexpected == ["extra.weight"]
    assert isinstance(err, ModelLoadError)


def test_wrong_family_and_class_conditional_hints():
    ddpm_sd = {k: torch.zeros(s) for k, s in expected_shapes(DDPM_SMALL).items()}
    with pytest.raises(StateDictMismatch, match="looks like an original-DDPM"):
        check_state_dict(ddpm_sd, SMALL_PRESET.arch)
    cond = {k: torch.zeros(s) for k, s in expected_shapes(SMALL_PRESET.arch).items()}
    cond["label_emb.weight"] = torch.zeros(1000, 128)
    with pytest.raises(StateDictMismatch, match="class-conditional"):
        check_state_dict(cond, SMALL_PRESET.arch)


def test_preset_inferred_from_file_name_and_checked(tmp_path, guided_file):
    _, small_sd = guided_file
    path = tmp_path / "afhq_dog_4m.pt"  # the paper's AFHQ-dog file name, but a small model inside
    torch.save(small_sd, path)
    with pytest.raises(StateDictMismatch, match=r"(?s)preset 'iddpm-afhq-dog-256'.*shape differences"):
        load_diffusion(str(path))
    with pytest.raises(ModelLoadError, match="no preset for 'mine.ckpt'"):
        load_diffusion(str(tmp_path / "mine.ckpt"))
    with pytest.raises(ModelLoadError, match="unknown checkpoint preset 'nope'"):
        load_diffusion(str(path), preset="nope")


def test_missing_file_says_where_to_download(tmp_path):
    with pytest.raises(ModelLoadError, match=r"not found.*metface_p2.pt from https://drive.google.com"):
        load_diffusion(str(tmp_path / "metface_p2.pt"))
    with pytest.raises(ModelLoadError, match="apply to checkpoint files"):
        load_diffusion("offline:small", sha256="0" * 64)


def test_only_plain_tensor_checkpoints_are_read(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": {"a": torch.zeros(1)}, "obj": _NotATensor()}, path)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_checkpoint(path, SMALL_PRESET)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _zero_sd(SMALL_PRESET.arch).items()}, "step": 3}, nested)
    assert load_checkpoint(nested, SMALL_PRESET).unet.config.sample_size == 64


class _NotATensor:
    """A pickled object that ``weights_only=True`` refuses to load."""


def _zero_sd(arch):
    return {k: torch.zeros(s) for k, s in expected_shapes(arch).items()}


def test_converted_folder_round_trip(tmp_path, guided_file):
    path, _ = guided_file
    loaded = load_checkpoint(path, SMALL_PRESET)
    folder = save_diffusers(loaded.unet, SMALL_PRESET.arch, SMALL_PRESET.schedule, tmp_path / "conv")
    model = load_diffusion(str(folder))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.unet(x, 10), HUNet(loaded.unet)(x, 10), atol=1e-6)
    with pytest.raises(ConversionError, match="fixed number of heads"):
        arch = GUIDED_SMALL["fixed-heads-varying-widths"]
        save_diffusers(build_unet(arch, device="meta"), arch, SMALL_PRESET.schedule, tmp_path / "no")


def test_unrepresentable_architectures_are_refused():
    with pytest.raises(ConversionError, match="channel_mult"):
        expected_shapes(GuidedUNetConfig(image_size=512, model_channels=64, num_res_blocks=1))  # mult (0.5, ...)
    with pytest.raises(ConversionError, match="resamp_with_conv"):
        expected_shapes(dataclasses.replace(DDPM_SMALL, resamp_with_conv=False))


def test_random_preset_builtin():
    model = load_diffusion("offline:random:adm-p2-metfaces-256")
    assert model.image_size == 256 and model.unet.h_channels == 512 and model.unet.learned_variance
    with pytest.raises(ModelLoadError, match="unknown checkpoint preset"):
        load_diffusion("offline:random:metfaces")


def test_params_model_spec_fields():
    from pipeline.blocks import ModelSpec

    spec = ModelSpec(id="pretrained/afhq_dog_4m.pt", image_size=256, preset="iddpm-afhq-dog-256", sha256="a" * 64)
    assert spec.preset == "iddpm-afhq-dog-256"
    with pytest.raises(ValueError, match="sha256"):
        ModelSpec(id="x.pt", image_size=256, sha256="abc")


def test_pipeline_load_model_passes_preset_and_sha256(guided_file, monkeypatch):
    """profiles.<p>.model.{preset, sha256} reach load_diffusion (a small preset stands in for the 256-px one)."""
    import copy

    import yaml

    from pipeline import params as P
    from pipeline.common import load_model

    path, _ = guided_file
    monkeypatch.setitem(PRESETS, SMALL_PRESET.name, SMALL_PRESET)
    raw = yaml.safe_load((Path(P.__file__).parents[1] / "params.yaml").read_text())
    data = copy.deepcopy(raw)
    data["profile"], data["attributes"] = "afhq_dog", ["happy"]
    model_spec = dict(id=str(path), image_size=64, preset=SMALL_PRESET.name, sha256=sha256_file(path))
    data["profiles"]["afhq_dog"].update(model=model_spec, device="cpu")
    model = load_model(P.params_from_dict(data))
    assert model.image_size == 64 and model.unet.learned_variance
    data["profiles"]["afhq_dog"]["model"]["sha256"] = "f" * 64
    with pytest.raises(ChecksumMismatch):
        load_model(P.params_from_dict(data))


def test_convert_cli_writes_a_loadable_folder(guided_file, tmp_path, monkeypatch, capsys):
    from asyrp.models.archs.convert import main

    path, _ = guided_file
    monkeypatch.setitem(PRESETS, SMALL_PRESET.name, SMALL_PRESET)
    assert main([str(path), str(tmp_path / "out"), "--preset", SMALL_PRESET.name, "--sha256", sha256_file(path)]) == 0
    assert "(test-guided-small) ->" in capsys.readouterr().out
    assert load_diffusion(str(tmp_path / "out")).unet.learned_variance
