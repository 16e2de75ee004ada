"""The official f_t: the guided-diffusion DeltaBlock kind, and importing the official released checkpoints.

The reference blocks below are the official DeltaBlocks written out from kwonminki/Asyrp_official
(models/ddpm/diffusion.py; models/improved_ddpm/unet.py = models/guided_diffusion/unet.py), and the files are
saved as its diffusion_latent.py saves them: {"0": block.state_dict(), "optimizer": ..., "scheduler": ...}.
"""

import subprocess
import sys

import pytest
import torch
from torch import nn

from asyrp.api import new_direction
from asyrp.core.directions import (
    GuidedOfficialDirection,
    OfficialDirection,
    check_compatible,
    load_direction,
    save_direction,
)
from asyrp.core.official import OfficialImportError, import_official, main, parse_official_name
from asyrp.models.archs import LINEAR_1000, DDPMUNetConfig, GuidedUNetConfig, build_unet, save_diffusers
from asyrp.models.diffusion import load_diffusion

NAME = "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"


def swish(x):
    return x * torch.sigmoid(x)


class RefDDPMDeltaBlock(nn.Module):
    """models/ddpm/diffusion.py DeltaBlock (Normalize: GroupNorm(32, eps 1e-6); nonlinearity: swish)."""

    def __init__(self, c, d):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)
        self.temb_proj = nn.Linear(d, c)
        self.norm2 = nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)
        self.conv2 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)

    def forward(self, x, temb):
        h = self.conv1(x) + self.temb_proj(swish(temb))[:, :, None, None]
        return self.conv2(swish(self.norm2(h)))


class RefGroupNorm32(nn.GroupNorm):
    """guided_diffusion/nn.py GroupNorm32 (normalization(channels) = GroupNorm32(32, channels))."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class RefGuidedDeltaBlock(nn.Module):
    """improved_ddpm/unet.py DeltaBlock(channels, emb_channels, dropout=0.0), use_scale_shift_norm False."""

    def __init__(self, c, d):
        super().__init__()
        self.in_layers = nn.Sequential(RefGroupNorm32(32, c), nn.SiLU(), nn.Conv2d(c, c, 1, padding=0))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(d, c))
        self.out_layers = nn.Sequential(
            RefGroupNorm32(32, c), nn.SiLU(), nn.Dropout(p=0.0), nn.Conv2d(c, c, 1, padding=0)
        )

    def forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.out_layers(h + emb_out)


# official key -> project key, written out here (not taken from asyrp.core.official)
LAYOUTS = {
    "official": (RefDDPMDeltaBlock, {"norm2.weight": "norm.weight", "norm2.bias": "norm.bias"}),
    "official_guided": (RefGuidedDeltaBlock, {}),
}


def official_file(path, kind="official", c=512, d=512, seed=0, state=None):
    """An official-style checkpoint with random values; returns (path, reference block)."""
    ref = LAYOUTS[kind][0](c, d)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())) * 0.1)
    n = len(ref.state_dict())
    torch.save(
        {
            "0": ref.state_dict() if state is None else state,
            "optimizer": {"state": {i: {"momentum_buffer": None} for i in range(n)}, "param_groups": [{"lr": 0.5}]},
            "scheduler": {"step_size": 20, "gamma": 0.9, "base_lrs": [0.5], "last_epoch": 0},
        },
        path,
    )
    return path, ref


@pytest.mark.parametrize(("kind", "c", "d"), [("official", 512, 512), ("official_guided", 64, 128)])
def test_state_dict_round_trip(tmp_path, kind, c, d):
    path, ref = official_file(tmp_path / NAME, kind, c, d)
    stem = import_official(path, tmp_path / "out", t_edit=513)
    direction, cfg = load_direction(stem)
    assert (cfg.kind, cfg.h_shape, cfg.temb_channels) == (kind, (c, 8, 8), d)
    rename = LAYOUTS[kind][1]
    got = direction.state_dict()
    assert sorted(got) == sorted(rename.get(k, k) for k in ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(got[rename.get(k, k)], v), k
    h, emb = torch.randn(2, c, 8, 8), torch.randn(2, d)
    with torch.no_grad():
        torch.testing.assert_close(direction(h, 999, emb), ref(h, emb), rtol=0, atol=1e-6)


def test_parameter_counts():
    """C = D = 512 (CelebA-HQ DDPM; AFHQ-dog / METFACES: 128 channels x 4): 788,992 and 790,016 parameters."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(OfficialDirection(512, 512)) == count(RefDDPMDeltaBlock(512, 512)) == 788_992
    assert count(GuidedOfficialDirection(512, 512)) == count(RefGuidedDeltaBlock(512, 512)) == 790_016


def test_name_inference(tmp_path):
    assert parse_official_name(NAME) == dict(
        attribute="smiling", category="CelebA_HQ", t_0=999, n_inv_steps=40, n_train_steps=40, iteration=0,
        checkpoint=None,
    )  # fmt: skip
    church = parse_official_name("church_red_brick_LC_church_outdoor_t999_ninv40_ngen40_0.pth")
    assert (church["attribute"], church["category"]) == ("church_red_brick", "church_outdoor")
    assert parse_official_name("dog_happy_LC_dog_t500_ninv20_ngen10_3_2.pth")["checkpoint"] == 2
    assert parse_official_name("my_direction.pth") is None
    cfg = load_direction(import_official(official_file(tmp_path / NAME)[0], tmp_path, t_edit=513))[1]
    assert (cfg.n_train_steps, cfg.t_0, cfg.t_edit, cfg.train["n_inv_steps"]) == (40, None, 513, 40)
    path = official_file(tmp_path / "dog_happy_LC_dog_t500_ninv20_ngen10_3.pth", "official_guided", 64, 128)[0]
    cfg = load_direction(import_official(path, tmp_path, t_edit=300))[1]
    assert (cfg.kind, cfg.n_train_steps, cfg.t_0, cfg.train["attribute"]) == ("official_guided", 10, 500, "dog_happy")


def test_missing_and_conflicting_values(tmp_path):
    named = official_file(tmp_path / NAME)[0]
    with pytest.raises(OfficialImportError, match=r"pass --t-edit \(the official name carries t_0.*never t_edit"):
        import_official(named, tmp_path / "out")
    with pytest.raises(OfficialImportError, match="n_train_steps=50 was given but the file name says 40"):
        import_official(named, tmp_path / "out", t_edit=513, n_train_steps=50)
    plain = official_file(tmp_path / "mine.pth")[0]
    with pytest.raises(OfficialImportError, match="pass --t-edit and --n-train-steps"):
        import_official(plain, tmp_path / "out")
    cfg = load_direction(import_official(plain, tmp_path / "out", t_edit=400, n_train_steps=20))[1]
    assert (cfg.n_train_steps, cfg.t_0) == (20, None)
    assert not (tmp_path / "out" / NAME.removesuffix(".pth")).with_suffix(".json").exists()


def test_mismatched_file_is_refused_in_one_message(tmp_path):
    state = RefDDPMDeltaBlock(512, 512).state_dict()
    state["conv2.weight"] = torch.zeros(512, 256, 1, 1)
    state["nin_shortcut.weight"] = torch.zeros(512)
    del state["temb_proj.bias"]
    path = official_file(tmp_path / NAME, state=state)[0]
    with pytest.raises(OfficialImportError) as err:
        import_official(path, tmp_path / "out", t_edit=513)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit kind 'official'" in msg
    assert "missing ['temb_proj.bias']" in msg and "unexpected ['nin_shortcut.weight']" in msg
    assert "conv2.weight has shape (512, 256, 1, 1), expected (512, 512, 1, 1)" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(OfficialImportError, match="expected"):  # pinned C that the file does not have
        import_official(official_file(tmp_path / NAME)[0], tmp_path / "out", t_edit=513, channels=256)
    torch.save({"0": torch.zeros(512, 8, 8), "optimizer": {}}, tmp_path / "table.pth")
    with pytest.raises(OfficialImportError, match="delta_h tensors"):
        import_official(tmp_path / "table.pth", tmp_path / "out", t_edit=513, n_train_steps=40)
    torch.save({"0": {"weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(OfficialImportError, match="match no official DeltaBlock layout"):
        import_official(tmp_path / "other.pth", tmp_path / "out", t_edit=513, n_train_steps=40)


def test_cli_exit_codes(tmp_path, capsys):
    path = official_file(tmp_path / NAME, "official_guided", 64, 128)[0]
    assert main(["import-official", str(path), "--out", str(tmp_path / "d"), "--t-edit", "513"]) == 0
    assert "kind official_guided" in capsys.readouterr().out
    assert load_direction(tmp_path / "d" / NAME.removesuffix(".pth"))[1].t_edit == 513
    assert main(["import-official", str(path), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--t-edit" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    run = subprocess.run(
        [sys.executable, "-m", "asyrp.core.official", "import-official", str(tmp_path / "junk.pth"), "--out",
         str(tmp_path / "d"), "--t-edit", "500", "--n-train-steps", "40"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "not a readable torch checkpoint" in run.stderr


TINY_GUIDED = GuidedUNetConfig(
    image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,), channel_mult=(1, 2),
    num_head_channels=32,
)  # fmt: skip
TINY_DDPM = DDPMUNetConfig(resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


@pytest.mark.parametrize(("arch", "kind"), [(TINY_GUIDED, "official_guided"), (TINY_DDPM, "official")])
def test_new_direction_picks_the_models_official_block(tmp_path, small_model, arch, kind):
    """A converted model keeps its family through a saved diffusers folder; "official" follows it."""
    folder = save_diffusers(build_unet(arch, seed=0), arch, LINEAR_1000, tmp_path / "unet")
    model = load_diffusion(str(folder))
    d, cfg = new_direction(model, "a face", "a smiling face", t_edit=500, seed=1)
    assert cfg.kind == kind and isinstance(d, GuidedOfficialDirection if kind == "official_guided" else nn.Module)
    assert new_direction(small_model, "a", "b", t_edit=500)[1].kind == "official"  # untagged (hub-style) model
    stem = save_direction(d, cfg, tmp_path / "d")
    d2, cfg2 = load_direction(stem)
    assert cfg2 == cfg and type(d2) is type(d)
    check_compatible(cfg2, model.unet.h_shape(), model.unet.temb_channels, str(folder))
    with pytest.raises(ValueError, match="time-embedding input"):
        check_compatible(cfg2, model.unet.h_shape(), model.unet.temb_channels + 1, str(folder))
