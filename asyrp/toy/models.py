"""The toy DDPM and toy CLIP: architectures, shipped-weight paths, loaders.

Toy DDPM: a diffusers ``UNet2DModel`` for 32-px images on DDPM's linear 1000-step schedule, one of
TOY_UNET_CONFIGS: ``v1`` (shipped so far) block_out_channels (32, 64, 128), one res block per level,
attention in the middle block only (2.5 M parameters), h = 128 x 8 x 8 (1/4 of the image); ``v2`` built
like the paper's models, scaled down: (32, 64, 128, 256) with attention at 8 and 4 px and in the middle
block (10.9 M parameters), h = 256 x 4 x 4 (1/8 of the image, App. D.3's "smallest spatial dimension").
A weights file names its architecture in its metadata ("config"), so loading builds the right one.

Toy CLIP: a small ``open_clip.CLIP`` (ViT 4 layers, width 128, patch 4 on 32-px
images; text transformer 3 layers) whose vocabulary is restricted to the captions' words.

`toy_diffusion` and `load_toy_clip` are the built-ins ``offline:toy`` and ``offline:toy-clip`` of
`asyrp.models.offline`, which names them as strings: this module imports `asyrp.models`, never the reverse.
safetensors is imported where weights are read or written (the configs above need only torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.clip import ClipModel
from ..models.diffusion import DDPM_SCHEDULE, build_unet
from ..models.errors import ModelLoadError
from .clip_model import MEAN, STD, WordTokenizer, build_toy_clip

ASSETS = Path(__file__).resolve().parent / "assets"
DDPM_WEIGHTS = ASSETS / "ddpm.safetensors"
CLIP_WEIGHTS = ASSETS / "clip.safetensors"

_COMMON = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=8)
TOY_UNET_CONFIGS = {
    "v1": dict(
        _COMMON,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
    ),
    "v2": dict(
        _COMMON,
        block_out_channels=(32, 64, 128, 256),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
    ),
}
TOY_UNET_CONFIG = TOY_UNET_CONFIGS["v1"]  # what a weights file without a "config" entry was trained as


def build_toy_unet(seed: int = 0, config: dict | str = "v1"):
    """A toy DDPM UNet2DModel (a TOY_UNET_CONFIGS name or a config dict) with seeded random weights."""
    return build_unet(TOY_UNET_CONFIGS[config] if isinstance(config, str) else config, seed)


def save_fp16(state: dict, path: Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    tmp.replace(path)
    path.chmod(0o644)


def load_fp32(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    return state, meta


def _weights(path: Path, what: str, command: str) -> tuple[dict, dict]:
    """(float32 state, metadata) of the fp16 safetensors at ``path``; a clear error when missing."""
    if not path.is_file():
        raise ModelLoadError(f"toy {what} weights {path} missing; train them: python -m {command}")
    return load_fp32(path)


def load_toy_unet(path: str | Path | None = None):
    """The shipped toy DDPM U-Net (fp16 on disk, float32 in memory), built as its file's metadata says."""
    state, meta = _weights(Path(path or DDPM_WEIGHTS), "DDPM", "asyrp.toy.train_ddpm")
    unet = build_toy_unet(0, meta.get("config", TOY_UNET_CONFIG))
    unet.load_state_dict(state)
    return unet.eval()


def toy_diffusion(seed: int = 0) -> tuple:
    """Built-in ``offline:toy``: (the shipped U-Net, DDPM's linear schedule). ``seed`` unused: trained weights."""
    return load_toy_unet(), dict(DDPM_SCHEDULE)


def load_toy_clip(device="cpu", path: str | Path | None = None) -> ClipModel:
    """Built-in ``offline:toy-clip``: the shipped toy CLIP as a `ClipModel` (word-level tokenizer, 32-px input)."""
    model = build_toy_clip()
    model.load_state_dict(_weights(Path(path or CLIP_WEIGHTS), "CLIP", "asyrp.toy.train_clip --export")[0])
    return ClipModel(model, WordTokenizer(), "offline:toy-clip", "toy", 32, MEAN, STD).to(device)
