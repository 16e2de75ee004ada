"""Edit directions in h-space: implicit f_t (Sec. 3.4, App. E) and explicit delta_h tables (Sec. 5.3, App. L).

Every direction maps ``(h, t, emb) -> delta_h`` with h: (B, C, h, w), t: int timestep, emb: (B, D) the
U-Net's own time embedding; delta_h has h's shape.

kinds:
    official   conv1x1(h) + Linear(swish(emb)) -> GroupNorm(32) -> swish -> conv1x1  (the official code's DDPM
               DeltaBlock, models/ddpm/diffusion.py; ~0.79 M parameters for C = 512; default for DDPM models)
    official_guided
               conv1x1(swish(GroupNorm(32, eps 1e-5)(h))) + Linear(swish(emb)) -> GroupNorm -> swish -> Dropout(0)
               -> conv1x1  (the official DeltaBlock of models/improved_ddpm/unet.py and models/guided_diffusion/
               unet.py; default for converted guided-diffusion models, ``official_kind``)
    concat     conv1x1([h, t/T]) -> GroupNorm -> swish -> conv1x1  (the paper's Fig. 16 wording:
               "two 1x1 convolutions concatenating timestep t")
    delta_h_t  one free tensor per grid timestep (the optimised delta_h_t of Fig. 6 / App. L.2), and the
               mean direction delta_h_t^mean = mean_i f_t(h_t^i)  (Sec. 5.3, built by ``mean_direction``)
    global     one time-invariant tensor delta_h^global = mean_t delta_h_t^mean (Sec. 5.3)

Saved as ``<stem>.safetensors`` (weights) + ``<stem>.json`` (``DirectionConfig``); never pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

Tensor = torch.Tensor
FORMAT_VERSION = 1
KINDS = ("official", "official_guided", "concat", "delta_h_t", "global")
OFFICIAL_KINDS = ("official", "official_guided")  # the kinds that take the U-Net's time embedding


def official_kind(arch_family: str | None) -> str:
    """The official f_t for a U-Net family: "guided" (iDDPM / ADM) -> official_guided, else (DDPM) official."""
    return "official_guided" if arch_family == "guided" else "official"


@dataclass
class DirectionConfig:
    """What a direction is and what it was trained for (the JSON beside the weights)."""

    kind: str
    h_shape: tuple[int, int, int]  # (C, h, w)
    temb_channels: int
    num_train_timesteps: int = 1000
    model_id: str = ""
    source: str = ""
    target: str = ""
    t_edit: int | None = None
    t_boost: int | None = None
    n_train_steps: int = 40  # generative steps of the training grid: delta_h is rescaled by n_train / n_gen
    spacing: str = "uniform"
    t_0: int | None = None  # inversion depth of the grid (None: T - 1, the paper's)
    timesteps: list[int] = field(default_factory=list)  # table kinds: the timesteps that have an entry
    train: dict = field(default_factory=dict)  # loss weights, optimiser, epochs, images, clip model, ...
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DirectionConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"direction config has unknown keys {sorted(unknown)} (written by a newer version?)")
        data["h_shape"] = tuple(data["h_shape"])
        return cls(**data)


def _groups(channels: int) -> int:
    return 32 if channels % 32 == 0 else max(g for g in range(1, 33) if channels % g == 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


class GroupNorm32(nn.GroupNorm):
    """guided-diffusion's GroupNorm32 (nn.py): GroupNorm(32, C), eps 1e-5, computed in float32."""

    def __init__(self, channels: int):
        super().__init__(_groups(channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class OfficialDirection(nn.Module):
    """f_t of the official DDPM code (models/ddpm/diffusion.py DeltaBlock, whose ``norm2`` is ``norm`` here)."""

    def __init__(self, channels: int, temb_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.temb_proj = nn.Linear(temb_channels, channels)
        self.norm = _group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor, t: int, emb: Tensor) -> Tensor:
        x = self.conv1(h) + self.temb_proj(nn.functional.silu(emb.to(h.dtype)))[:, :, None, None]
        return self.conv2(nn.functional.silu(self.norm(x)))


class GuidedOfficialDirection(nn.Module):
    """f_t of the official guided-diffusion code (improved_ddpm/unet.py DeltaBlock): a ResBlock without skip.

    Layer names are the official ones, so its state dict loads as saved; h: (B, C, h, w), emb: (B, D)."""

    def __init__(self, channels: int, temb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, channels, 1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb_channels, channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Dropout(p=dropout), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, h: Tensor, t: int, emb: Tensor) -> Tensor:
        x = self.in_layers(h) + self.emb_layers(emb.to(h.dtype))[:, :, None, None]
        return self.out_layers(x)


class ConcatDirection(nn.Module):
    """f_t as the paper words it: two 1x1 convs on [h, t / T] with GroupNorm and swish between."""

    def __init__(self, channels: int, num_train_timesteps: int = 1000):
        super().__init__()
        self.T = num_train_timesteps
        self.conv1 = nn.Conv2d(channels + 1, channels, 1)
        self.norm = _group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor, t: int, emb: Tensor) -> Tensor:
        t_map = torch.full_like(h[:, :1], float(t) / self.T)
        return self.conv2(nn.functional.silu(self.norm(self.conv1(torch.cat([h, t_map], dim=1)))))


class DeltaHTable(nn.Module):
    """One delta_h per timestep (explicit, input independent); unseen t uses the nearest entry."""

    def __init__(self, h_shape: tuple[int, int, int], timesteps: list[int], values: Tensor | None = None):
        super().__init__()
        self.timesteps = [int(t) for t in timesteps]
        init = torch.zeros(len(self.timesteps), *h_shape) if values is None else values.detach().clone()
        self.table = nn.Parameter(init)

    def index(self, t: int) -> int:
        return min(range(len(self.timesteps)), key=lambda i: (abs(self.timesteps[i] - t), -self.timesteps[i]))

    def forward(self, h: Tensor, t: int, emb: Tensor) -> Tensor:
        return self.table[self.index(t)].to(h.dtype).expand_as(h)


class GlobalDirection(nn.Module):
    """delta_h^global: one time-invariant, input-independent delta_h (Sec. 5.3)."""

    def __init__(self, h_shape: tuple[int, int, int], value: Tensor | None = None):
        super().__init__()
        self.delta_h = nn.Parameter(torch.zeros(h_shape) if value is None else value.detach().clone())

    def forward(self, h: Tensor, t: int, emb: Tensor) -> Tensor:
        return self.delta_h.to(h.dtype).expand_as(h)


def build_direction(config: DirectionConfig) -> nn.Module:
    """An untrained direction of ``config.kind`` for ``config.h_shape``."""
    c = config.h_shape[0]
    if config.kind == "official":
        return OfficialDirection(c, config.temb_channels)
    if config.kind == "official_guided":
        return GuidedOfficialDirection(c, config.temb_channels)
    if config.kind == "concat":
        return ConcatDirection(c, config.num_train_timesteps)
    if config.kind == "delta_h_t":
        if not config.timesteps:
            raise ValueError("a delta_h_t direction needs config.timesteps (the editing-interval grid)")
        return DeltaHTable(config.h_shape, config.timesteps)
    if config.kind == "global":
        return GlobalDirection(config.h_shape)
    raise ValueError(f"unknown direction kind {config.kind!r}; choose one of {KINDS}")


def stable_safetensors(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the header's keys sorted: safetensors writes its metadata map in a random order per
    call, so identical tensors gave files of different sha256 and DVC reran everything downstream."""
    raw = save(state, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    sorted_header = {k: dict(sorted(v.items())) if k == "__metadata__" else v for k, v in sorted(header.items())}
    text = json.dumps(sorted_header, separators=(",", ":")).encode()
    if len(text) > n:  # cannot happen (same content, compact separators); refuse rather than corrupt
        raise RuntimeError("safetensors header grew when sorted")
    return raw[:8] + text.ljust(n, b" ") + raw[8 + n :]  # the spec pads the header with spaces


def save_direction(direction: nn.Module, config: DirectionConfig, path: str | Path) -> Path:
    """Write ``<path>.safetensors`` + ``<path>.json`` (path given with or without suffix); returns the stem."""
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in direction.state_dict().items()}
    tmp = stem.with_name(stem.name + ".tmp.safetensors")
    tmp.write_bytes(stable_safetensors(state, {"asyrp_kind": config.kind, "version": str(FORMAT_VERSION)}))
    tmp.replace(stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text(config.to_json() + "\n")
    return stem


def load_direction(path: str | Path, device="cpu") -> tuple[nn.Module, DirectionConfig]:
    """Load a direction saved by ``save_direction``; strict: every tensor must match its config."""
    stem = Path(path).with_suffix("")
    cfg_path, w_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (cfg_path, w_path):
        if not p.exists():
            raise FileNotFoundError(f"direction file {p} not found (a direction is a .json + .safetensors pair)")
    config = DirectionConfig.from_json(cfg_path.read_text())
    direction = build_direction(config)
    state = load_file(str(w_path))
    missing, unexpected = set(direction.state_dict()) - set(state), set(state) - set(direction.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{w_path}: tensors do not match kind {config.kind!r}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    for k, v in direction.state_dict().items():
        if v.shape != state[k].shape:
            raise ValueError(f"{w_path}: tensor {k} has shape {tuple(state[k].shape)}, config implies {tuple(v.shape)}")
    direction.load_state_dict(state)
    return direction.to(device).eval(), config


def check_compatible(
    config: DirectionConfig,
    h_shape,
    temb_channels: int,
    model_id: str | None = None,
    num_train_timesteps: int = 1000,
) -> None:
    """Raise a clear error if a direction cannot be applied to this model (before any compute)."""
    problems = []
    if tuple(config.h_shape) != tuple(h_shape):
        problems.append(f"it was trained for h-space {tuple(config.h_shape)} but this model's h is {tuple(h_shape)}")
    if config.kind in OFFICIAL_KINDS and config.temb_channels != temb_channels:
        problems.append(f"its time-embedding input is {config.temb_channels}-d but the model's is {temb_channels}-d")
    if config.num_train_timesteps != num_train_timesteps:
        problems.append(
            f"it expects T={config.num_train_timesteps} training timesteps, the model has {num_train_timesteps}"
        )
    if model_id is not None and config.model_id and config.model_id != model_id:
        problems.append(f"it was trained on model {config.model_id!r}, not {model_id!r}")
    if problems:
        raise ValueError(f"direction ({config.source!r} -> {config.target!r}) does not fit: " + "; ".join(problems))
