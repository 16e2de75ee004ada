"""Loading the frozen diffusion model: a diffusers ``UNet2DModel`` plus its noise schedule.

Model ids:
    ``google/ddpm-celebahq-256`` | ``google/ddpm-church-256`` | ``google/ddpm-bedroom-256`` and their
    ``google/ddpm-ema-*`` variants (any diffusers DDPM repo with a UNet2DModel and a scheduler config);
    a local folder in diffusers format (``config.json`` + weights at its root or under ``unet/``);
    a checkpoint file: ``.pt`` (guided-diffusion: the paper's AFHQ-dog iDDPM and METFACES P2-ADM) or ``.ckpt``
    (original DDPM: SDEdit's CelebA-HQ, LSUN church/bedroom), converted by ``asyrp.models.archs`` (presets there);
    a built-in of ``asyrp.models.offline.DIFFUSION``: ``offline:small`` (seeded random 32-px UNet: tests and the
    plumbing-only offline profile), ``offline:ddpm-256-random``, ``offline:toy`` (the toy world's trained 32-px
    DDPM, see ``asyrp.toy``); ``offline:random:<preset>``: a checkpoint preset's architecture, seeded random weights.

diffusers and huggingface_hub are imported inside the functions that use them: diffusers takes seconds to import,
and ``import asyrp.models`` stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.hspace import HUNet
from ..seeding import seeded
from . import offline
from .archs.checkpoint import is_checkpoint_path, load_checkpoint
from .archs.convert import build_unet as build_arch
from .archs.presets import Preset, get_preset
from .errors import ModelLoadError, host_reachable, hub_offline

__all__ = [
    "DDPM_256_CONFIG", "DDPM_SCHEDULE", "PAPER_MODEL_IDS", "SMALL_UNET_CONFIG", "DiffusionModel", "ModelLoadError",
    "build_unet", "host_reachable", "hub_offline", "load_diffusion", "resolve_device", "schedule_from_config",
]  # fmt: skip

PAPER_MODEL_IDS = (
    "google/ddpm-celebahq-256",
    "google/ddpm-church-256",
    "google/ddpm-bedroom-256",
    "google/ddpm-ema-celebahq-256",
    "google/ddpm-ema-church-256",
    "google/ddpm-ema-bedroom-256",
)

# The small offline model: 3 levels, attention at 16x16, h = 64 x 8 x 8 for 32-px images.
SMALL_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)

# The architecture of google/ddpm-celebahq-256 (and church/bedroom): h = 512 x 8 x 8, ~114 M parameters.
DDPM_256_CONFIG = dict(
    sample_size=256,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    norm_num_groups=32,
)

# DDPM's linear schedule (Ho et al. 2020), used by all the paper's DDPM checkpoints.
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


@dataclass
class DiffusionModel:
    """A frozen U-Net with h-space access and its schedule.

    alphas_cumprod: (T,) float64, alpha_t of the paper.  betas: (T,) float64.
    """

    unet: HUNet
    alphas_cumprod: torch.Tensor
    betas: torch.Tensor
    model_id: str
    image_size: int

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def schedule_from_config(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) in float64 from a diffusers scheduler config."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(dict(config))
    betas = sched.betas.double()
    return betas, torch.cumprod(1.0 - betas, dim=0)


def build_unet(config: dict, seed: int = 0):
    """A UNet2DModel from a config dict with seeded random weights."""
    from diffusers import UNet2DModel

    with seeded(seed):
        return UNet2DModel(**config)


def small_unet(seed: int = 0):
    """Built-in ``offline:small``: the small UNet (SMALL_UNET_CONFIG) with seeded random weights."""
    return build_unet(SMALL_UNET_CONFIG, seed), dict(DDPM_SCHEDULE)


def ddpm_256_random(seed: int = 0):
    """Built-in ``offline:ddpm-256-random``: google/ddpm-*-256's architecture with seeded random weights."""
    return build_unet(DDPM_256_CONFIG, seed), dict(DDPM_SCHEDULE)


def _random_preset(model_id: str, seed: int):
    """``offline:random:<preset>``: a checkpoint preset's architecture and schedule, seeded random weights."""
    try:
        spec = get_preset(model_id.removeprefix("offline:random:"))
    except KeyError as exc:
        raise ModelLoadError(str(exc.args[0])) from None
    return build_arch(spec.arch, seed=seed).eval(), dict(spec.schedule)


def _load_pretrained(model_id: str, device: torch.device):
    from diffusers import UNet2DModel

    path = Path(model_id).expanduser()
    if path.is_dir():
        sub = "unet" if (path / "unet" / "config.json").exists() else None
        if sub is None and not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a diffusers model folder (no config.json, no unet/config.json)")
        unet = UNet2DModel.from_pretrained(path, subfolder=sub)
        sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
        return unet, _read_scheduler_config(sched_dir / "scheduler_config.json")
    try:  # the local cache first: no network round trip at all when the model is there
        unet = UNet2DModel.from_pretrained(model_id, local_files_only=True)
    except Exception as cached_err:  # noqa: BLE001 - any failure means: not usable from the cache
        if hub_offline():
            raise ModelLoadError(
                f"diffusion model {model_id!r} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and huggingface.co cannot be reached. "
                f"On a machine with internet run `huggingface-cli download {model_id}` and copy the cache "
                f"(or the downloaded folder, then pass its path as the model id). Cause: {cached_err}"
            ) from None
        unet = UNet2DModel.from_pretrained(model_id)
    from huggingface_hub import hf_hub_download

    cfg = hf_hub_download(model_id, "scheduler_config.json", local_files_only=hub_offline())
    return unet, _read_scheduler_config(Path(cfg))


def _read_scheduler_config(path: Path) -> dict:
    if not path.exists():  # DDPM checkpoints without a scheduler file all use the linear schedule
        return dict(DDPM_SCHEDULE)
    return json.loads(path.read_text())


def load_diffusion(
    model_id: str,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    preset: str | Preset | None = None,
    sha256: str | None = None,
    channels_last: bool = False,
) -> DiffusionModel:
    """Load a frozen diffusion model by hub id, local folder, checkpoint file, or built-in ``offline:*`` id.

    A ``.pt`` / ``.ckpt`` / ``.pth`` / ``.bin`` path is a guided-diffusion (iDDPM / ADM) or original-DDPM state
    dict, converted to a ``UNet2DModel`` by :mod:`asyrp.models.archs`: ``preset`` (a name of
    ``asyrp.models.archs.PRESETS`` or a ``Preset``) gives its architecture and schedule, default: inferred from the
    file name; ``sha256`` pins the file's hash, verified before loading. ``offline:random:<preset>``: that
    preset's architecture with seeded random weights. ``channels_last``: the U-Net's weights in NHWC, so its
    convolutions run channels-last (1.11-1.22x per forward on the toy DDPM on CPU; docs/benchmarks.md).
    """
    device = torch.device(device)
    if (preset is not None or sha256) and not is_checkpoint_path(model_id):
        raise ModelLoadError(
            f"preset / sha256 apply to checkpoint files (.pt, .ckpt, .pth, .bin), not to {model_id!r}: remove "
            f"them, or point the model id at the checkpoint file"
        )
    if model_id.startswith("offline:random:"):
        unet, sched_cfg = _random_preset(model_id, seed)
    elif model_id.startswith("offline:"):  # the built-ins of asyrp.models.offline
        unet, sched_cfg = offline.builtin(offline.DIFFUSION, model_id, "model", ("offline:random:<preset>",))(seed)
    elif is_checkpoint_path(model_id):  # guided-diffusion .pt / original DDPM .ckpt, converted
        loaded = load_checkpoint(model_id, preset, sha256=sha256)
        unet, sched_cfg = loaded.unet, dict(loaded.preset.schedule)
    else:
        unet, sched_cfg = _load_pretrained(model_id, device)
    betas, alphas_cumprod = schedule_from_config(sched_cfg)
    unet = unet.to(device)
    if channels_last:  # weights only: a convolution runs NHWC when its weight is, so inputs need no conversion
        unet = unet.to(memory_format=torch.channels_last)
    hunet = HUNet(unet, autocast_dtype=autocast_dtype)
    return DiffusionModel(hunet, alphas_cumprod, betas, model_id, hunet._image_size())


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise a torch device string, checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev
