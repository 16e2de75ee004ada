"""Checkpoint presets: architecture hyper-parameters, schedule and provenance of each known checkpoint.

Two checkpoint families, both converted into a diffusers ``UNet2DModel`` by :mod:`asyrp.models.archs.convert`:

``guided``  the ``UNetModel`` of openai/guided-diffusion (ADM, Dhariwal & Nichol 2021) and of the repositories
            built on it: ILVR (jychoi118/ilvr_adm, the paper's AFHQ-dog iDDPM) and P2 weighting
            (jychoi118/P2-weighting, the paper's METFACES ADM). ``.pt`` files holding a plain state dict
            (``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``, ``time_embed.*``, ``out.*``).
``ddpm``    the pytorch port of Ho et al.'s DDPM (pesser/pytorch_diffusion, ermongroup/ddim ``Model``, the
            official Asyrp code's ``DDPM`` class). ``.ckpt`` files used by SDEdit, DiffusionCLIP and Asyrp for
            CelebA-HQ, LSUN-church and LSUN-bedroom (``temb.dense.*``, ``down.*``, ``mid.*``, ``up.*``).

This module only holds data (no torch import), so ``pipeline.params`` and docs can read it cheaply.
The hyper-parameters are the flags published with each checkpoint (README sampling commands of the source
repositories, and the official Asyrp code's ``AFHQ_DICT`` / ``METFACE_DICT``); ``md5`` is the checksum the
source publishes, where it publishes one. No sha256 is published for any of them: pin the one of your copy
in params.yaml (``profiles.<name>.model.sha256``) and loading verifies it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

# The linear schedule of DDPM (Ho et al. 2020); guided-diffusion's "linear" for 1000 steps is the same.
LINEAR_1000 = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
# improved-diffusion's cosine schedule (Nichol & Dhariwal 2021), diffusers' name for it.
COSINE_1000 = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

# guided-diffusion's create_model: channel_mult for channel_mult="" by image size.
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclass(frozen=True)
class GuidedUNetConfig:
    """guided-diffusion ``UNetModel`` hyper-parameters, named as the flags of its scripts.

    attention_resolutions: in pixels, as the ``--attention_resolutions 16`` flag (not the downsample rates).
    channel_mult: None = guided-diffusion's default for ``image_size``.
    num_head_channels: fixed channels per head (-1 = use ``num_heads`` heads everywhere).
    learn_sigma: the output has 2 x in_channels channels: eps, then the variance interpolation v.
    """

    image_size: int
    model_channels: int  # --num_channels
    num_res_blocks: int
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[float, ...] | None = None
    learn_sigma: bool = True
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dropout: float = 0.0
    in_channels: int = 3
    family: str = field(default="guided", init=False)

    @property
    def mult(self) -> tuple[float, ...]:
        if self.channel_mult is not None:
            return tuple(self.channel_mult)
        if self.image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {self.image_size}: give channel_mult")
        return _DEFAULT_CHANNEL_MULT[self.image_size]

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample rates with attention (guided-diffusion's ``attention_resolutions`` argument of UNetModel)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def h_channels(self) -> int:
        """C of h-space (the middle block's channels): model_channels x the last channel_mult."""
        return int(self.model_channels * self.mult[-1])

    def describe(self) -> str:
        heads = f"{self.num_head_channels} ch/head" if self.num_head_channels != -1 else f"{self.num_heads} heads"
        return (
            f"guided-diffusion UNetModel {self.image_size}px, {self.model_channels} channels x {self.mult}, "
            f"{self.num_res_blocks} res blocks/level, attention at {self.attention_resolutions} px ({heads}), "
            f"scale-shift norm {self.use_scale_shift_norm}, resblock up/down {self.resblock_updown}, "
            f"learned variance {self.learn_sigma}"
        )


@dataclass(frozen=True)
class DDPMUNetConfig:
    """Hyper-parameters of the DDPM ``Model`` (pesser/pytorch_diffusion, ermongroup/ddim, Asyrp's ``DDPM``)."""

    resolution: int
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    in_channels: int = 3
    out_ch: int = 3
    resamp_with_conv: bool = True
    dropout: float = 0.0
    family: str = field(default="ddpm", init=False)

    @property
    def image_size(self) -> int:
        return self.resolution

    @property
    def h_channels(self) -> int:
        return self.ch * self.ch_mult[-1]

    def describe(self) -> str:
        return (
            f"DDPM Model {self.resolution}px, {self.ch} channels x {self.ch_mult}, {self.num_res_blocks} res "
            f"blocks/level, attention at {self.attn_resolutions} px"
        )


ArchConfig = GuidedUNetConfig | DDPMUNetConfig


@dataclass(frozen=True)
class Preset:
    """A known checkpoint: its architecture, schedule and where to get it."""

    name: str
    arch: ArchConfig
    dataset: str
    filenames: tuple[str, ...]  # names the source gives the file (the preset is inferred from them)
    url: str  # download page / file
    source: str  # who trained / released it
    paper_use: str = ""  # what the Asyrp paper used it for, if it did
    md5: str | None = None  # published by the source
    schedule: dict = field(default_factory=lambda: dict(LINEAR_1000))

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def image_size(self) -> int:
        return self.arch.image_size


# --- the architectures -------------------------------------------------------------------------------

# The 256-px DDPM of Ho et al. (CelebA-HQ, LSUN church/bedroom/cat): ~114 M parameters, h = 512 x 8 x 8.
DDPM_256 = DDPMUNetConfig(resolution=256)

# "Lightweight ADM" (P2 weighting's default, 93 M parameters), also ILVR's FFHQ / AFHQ-dog iDDPM models
# (same flags in both READMEs and in Asyrp's AFHQ_DICT / METFACE_DICT): h = 512 x 8 x 8.
ADM_LIGHT_256 = GuidedUNetConfig(
    image_size=256,
    model_channels=128,
    num_res_blocks=1,
    attention_resolutions=(16,),
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)

# openai/guided-diffusion's unconditional 256-px models (ImageNet uncond, LSUN bedroom/cat/horse):
# ~552 M parameters, h = 1024 x 8 x 8.
ADM_256 = GuidedUNetConfig(
    image_size=256,
    model_channels=256,
    num_res_blocks=2,
    attention_resolutions=(32, 16, 8),
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)

_SDEDIT = "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/"
_PESSER = "pesser/pytorch_diffusion (Ho et al.'s TF checkpoints converted; URLs: ermongroup/ddim ckpt_util.py)"
_P2 = "P2 weighting, Choi et al. CVPR 2022 (github.com/jychoi118/P2-weighting)"
_ILVR = "ILVR, Choi et al. ICCV 2021 (github.com/jychoi118/ilvr_adm)"
_OPENAI = "Dhariwal & Nichol 2021 (github.com/openai/guided-diffusion)"
_GDRIVE = "https://drive.google.com/file/d/{}/view"
_OAI_BLOB = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/{}"

_PRESETS = [
    # --- the paper's checkpoints --------------------------------------------------------------------
    Preset(
        "ddpm-celebahq-256",
        DDPM_256,
        "celeba_hq",
        ("celeba_hq.ckpt",),
        _SDEDIT + "celeba_hq.ckpt",
        "SDEdit, Meng et al. 2021 (github.com/ermongroup/SDEdit): DDPM on CelebA-HQ",
        "CelebA-HQ (the official Asyrp and DiffusionCLIP code download this file; the hub's "
        "google/ddpm(-ema)-celebahq-256 has the same architecture)",
    ),
    Preset(
        "ddpm-church-256",
        DDPM_256,
        "lsun_church",
        ("church_outdoor.ckpt", "model-4432000.ckpt"),
        _SDEDIT + "church_outdoor.ckpt",
        "SDEdit's copy of Ho et al.'s EMA LSUN-church DDPM; also " + _PESSER + " as ema_lsun_church",
        "LSUN-church (official code; hub: google/ddpm(-ema)-church-256, same architecture)",
        md5="fdc68a23938c2397caba4a260bc2445f",  # pytorch_diffusion's ema_lsun_church model-4432000.ckpt only
    ),
    Preset(
        "ddpm-bedroom-256",
        DDPM_256,
        "lsun_bedroom",
        ("bedroom.ckpt", "model-2388000.ckpt"),
        _SDEDIT + "bedroom.ckpt",
        "SDEdit's copy of Ho et al.'s LSUN-bedroom DDPM; also " + _PESSER + " as (ema_)lsun_bedroom",
        "LSUN-bedroom (official code; hub: google/ddpm(-ema)-bedroom-256, same architecture)",
        md5="1921fa46b66a3665e450e42f36c2720f",  # pytorch_diffusion's ema_lsun_bedroom model-2388000.ckpt only
    ),
    Preset(
        "iddpm-afhq-dog-256",
        ADM_LIGHT_256,
        "afhq_dog",
        ("afhq_dog_4m.pt",),
        _GDRIVE.format("14OG_o3aa8Hxmfu36IIRyOgRwEP6ngLdo"),
        _ILVR + ": iDDPM on AFHQ-dog, 4 M images seen",
        "AFHQ-dog (the official Asyrp code's MODEL_PATHS['AFHQ'] = pretrained/afhq_dog_4m.pt)",
    ),
    Preset(
        "adm-p2-metfaces-256",
        ADM_LIGHT_256,
        "metfaces",
        ("metface_p2.pt",),
        _GDRIVE.format("1swjgSB1WFF9JnBR6W6Newnfzdyo1nPYf"),
        _P2 + ": ADM trained with P2 weighting on METFACES",
        "METFACES (the official Asyrp code's MODEL_PATHS['MetFACE'] = pretrained/metface_p2.pt)",
    ),
    # --- the same family: other checkpoints of the same architectures -----------------------------
    Preset(
        "iddpm-ffhq-256",
        ADM_LIGHT_256,
        "ffhq",
        ("ffhq_10m.pt",),
        _GDRIVE.format("117Y6Z6-Hg6TMZVIXMmgYbpZy7QvTXign"),
        _ILVR + ": iDDPM on FFHQ, 10 M images seen",
    ),
    Preset(
        "adm-p2-afhq-dog-256",
        ADM_LIGHT_256,
        "afhq_dog",
        ("afhq_p2.pt",),
        _GDRIVE.format("1f6_swzSPNJXs9FWf6AW585bv7dORzRWf"),
        _P2 + ": AFHQ-dog with P2 weighting",
    ),
    Preset(
        "adm-p2-ffhq-256",
        ADM_LIGHT_256,
        "ffhq",
        ("ffhq_p2.pt",),
        _GDRIVE.format("1nlCPBqOqSeqAQ8F4noThbnmr4okriwTc"),
        _P2 + ": FFHQ with P2 weighting",
    ),
    Preset(
        "adm-p2-celebahq-256",
        ADM_LIGHT_256,
        "celeba_hq",
        ("celebahq_p2.pt",),
        _GDRIVE.format("1ag8JnvKGKo6L6avO_dTFEBNWJo2jZIDF"),
        _P2 + ": CelebA-HQ with P2 weighting",
    ),
    Preset(
        "adm-metfaces-baseline-256",
        ADM_LIGHT_256,
        "metfaces",
        ("metface_baseline.pt",),
        _GDRIVE.format("1SaHqew52S9iRCeN7kpPMLqlo2t34ekTb"),
        _P2 + ": METFACES baseline (no P2 weighting)",
    ),
    Preset(
        "adm-afhq-dog-baseline-256",
        ADM_LIGHT_256,
        "afhq_dog",
        ("afhq_baseline.pt",),
        _GDRIVE.format("1bv-xnJC1-qBg9ZlVdugsXLuHVsKj1RRE"),
        _P2 + ": AFHQ-dog baseline (no P2 weighting)",
    ),
    Preset(
        "adm-imagenet-256-uncond",
        ADM_256,
        "imagenet",
        ("256x256_diffusion_uncond.pt",),
        _OAI_BLOB.format("256x256_diffusion_uncond.pt"),
        _OPENAI + ": unconditional ImageNet 256",
    ),
    Preset(
        "adm-lsun-bedroom-256",
        ADM_256,
        "lsun_bedroom",
        ("lsun_bedroom.pt",),
        _OAI_BLOB.format("lsun_bedroom.pt"),
        _OPENAI + ": LSUN bedroom (dropout 0.1 in training)",
    ),
    Preset(
        "adm-lsun-cat-256",
        ADM_256,
        "lsun_cat",
        ("lsun_cat.pt",),
        _OAI_BLOB.format("lsun_cat.pt"),
        _OPENAI + ": LSUN cat",
    ),
    Preset(
        "adm-lsun-horse-256",
        ADM_256,
        "lsun_horse",
        ("lsun_horse.pt", "lsun_horse_nodropout.pt"),
        _OAI_BLOB.format("lsun_horse.pt"),
        _OPENAI + ": LSUN horse (and its no-dropout twin)",
    ),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}
PAPER_PRESETS = tuple(p.name for p in _PRESETS if p.paper_use)


def get_preset(name: str) -> Preset:
    """The preset of that name; KeyError naming the closest names otherwise."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, list(PRESETS), n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise KeyError(f"unknown checkpoint preset {name!r}{hint}; known: {', '.join(PRESETS)}")


def preset_for_file(path: str | Path) -> Preset | None:
    """The preset whose published file name is this file's name, if exactly one is."""
    base = Path(path).name
    hits = [p for p in _PRESETS if base in p.filenames]
    return hits[0] if len(hits) == 1 else None


def presets_table() -> str:
    """A markdown table of every preset (name, architecture, dataset, file, source, paper use)."""
    rows = ["| preset | architecture | h | file | source | paper use |", "|---|---|---|---|---|---|"]
    for p in _PRESETS:
        arch = "DDPM" if p.family == "ddpm" else f"guided-diffusion {p.arch.model_channels}ch"
        side = p.image_size // 2 ** (len(_mult(p.arch)) - 1)
        h = f"{p.arch.h_channels}x{side}x{side}"
        rows.append(f"| `{p.name}` | {arch} | {h} | [{p.filenames[0]}]({p.url}) | {p.source} | {p.paper_use or '-'} |")
    return "\n".join(rows)


def _mult(arch: ArchConfig) -> tuple:
    return arch.mult if isinstance(arch, GuidedUNetConfig) else arch.ch_mult
