"""Reading checkpoint files: ``weights_only`` load, sha256 pinning, and errors that list every difference.

    loaded = load_checkpoint("pretrained/metface_p2.pt")          # preset inferred from the file name
    loaded = load_checkpoint(path, "iddpm-afhq-dog-256", sha256="…")
    loaded.unet        # diffusers UNet2DModel (eval, float32), for asyrp.core.hspace.HUNet
    loaded.preset      # the Preset (architecture, schedule, provenance)

A state dict that does not match its preset raises :class:`StateDictMismatch` naming the missing keys, the
unexpected keys and the shape differences (never a silent ``strict=False``), with a hint when the file looks
like another family or another known preset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .convert import ConversionError, convert_checkpoint, expected_shapes
from .presets import PRESETS, ArchConfig, Preset, get_preset, preset_for_file

CHECKPOINT_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")
_SHOW = 8  # names listed per category in a mismatch message


class StateDictMismatch(ModelLoadError):
    """The checkpoint's keys or shapes differ from the preset's architecture."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], shapes: dict[str, tuple]):
        super().__init__(message)
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes


class ChecksumMismatch(ModelLoadError):
    """The file's sha256 is not the pinned one."""


@dataclass
class LoadedCheckpoint:
    unet: torch.nn.Module
    preset: Preset
    path: Path
    sha256: str | None  # computed when one was pinned


def is_checkpoint_path(model_id: str) -> bool:
    """Whether a model id names a single checkpoint file (by suffix), existing or not."""
    return Path(model_id).suffix.lower() in CHECKPOINT_SUFFIXES


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> str:
    """The file's sha256; ChecksumMismatch if it is not ``expected`` (case-insensitive hex)."""
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        raise ChecksumMismatch(
            f"{path}: sha256 is {actual}, but {expected.strip().lower()} is pinned (params.yaml "
            f"profiles.<profile>.model.sha256). The file is corrupt, truncated or a different checkpoint; "
            f"download it again, or pin the new hash if you changed checkpoints on purpose."
        )
    return actual


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, loaded with ``weights_only=True`` on the CPU.

    Accepts a plain state dict, one nested under ``state_dict`` / ``model`` / ``ema``, and DataParallel's
    ``module.`` prefix.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only errors all mean: not loadable
        raise ModelLoadError(
            f"{path} could not be read as a PyTorch state dict with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Only plain tensor checkpoints are loaded: a file "
            f"that needs arbitrary pickled objects is refused on purpose."
        ) from None
    if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _short(names: list[str]) -> str:
    more = f", … ({len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def _guess_family(keys: set[str]) -> str | None:
    if "temb.dense.0.weight" in keys or "mid.block_1.norm1.weight" in keys:
        return "ddpm"
    if "time_embed.0.weight" in keys or "middle_block.0.in_layers.0.weight" in keys:
        return "guided"
    if "time_embedding.linear_1.weight" in keys:
        return "diffusers"
    return None


def _matching_presets(state_dict: dict[str, torch.Tensor]) -> list[str]:
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    seen, names = set(), []
    for p in PRESETS.values():
        if id(p.arch) in seen:
            continue
        seen.add(id(p.arch))
        try:
            if expected_shapes(p.arch) == shapes:
                names.append(p.name)
        except ConversionError:
            continue
    return names


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: ArchConfig, what: str = "checkpoint") -> None:
    """StateDictMismatch listing every missing / unexpected key and shape difference against ``arch``."""
    expected = expected_shapes(arch)
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = {k: (got[k], expected[k]) for k in expected if k in got and got[k] != expected[k]}
    if not (missing or unexpected or shapes):
        return
    lines = [f"{what} does not match {arch.describe()}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys: {_short(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {_short(unexpected)}")
    if shapes:
        diffs = [f"{k}: checkpoint {a} vs preset {b}" for k, (a, b) in shapes.items()]
        lines.append(f"  {len(shapes)} shape differences: {_short(diffs)}")
    hints = []
    family = _guess_family(set(got))
    if family and family != arch.family:
        kind = {"ddpm": "an original-DDPM (.ckpt)", "guided": "a guided-diffusion (.pt)", "diffusers": "a diffusers"}
        hints.append(f"the file looks like {kind[family]} state dict, the preset is a {arch.family} one")
    if any(k.startswith("label_emb") for k in unexpected):
        hints.append("label_emb.* means a class-conditional model: Asyrp edits unconditional models only")
    out_key = "out.2.weight" if arch.family == "guided" else "conv_out.weight"
    if out_key in shapes and shapes[out_key][0][0] == 2 * shapes[out_key][1][0]:
        hints.append("the output has twice the channels: a learned-variance model (learn_sigma=True)")
    elif out_key in shapes and 2 * shapes[out_key][0][0] == shapes[out_key][1][0]:
        hints.append("the output has half the channels: a fixed-variance model (learn_sigma=False)")
    others = _matching_presets(state_dict)
    if others:
        hints.append(f"it matches the architecture of preset(s) {', '.join(others)}")
    lines += [f"  hint: {h}" for h in hints]
    raise StateDictMismatch("\n".join(lines), missing, unexpected, shapes)


def resolve_preset(path: str | Path, preset: str | Preset | None) -> Preset:
    """The preset object: given by name, given as an object, or inferred from the file name."""
    if isinstance(preset, Preset):
        return preset
    if preset:
        try:
            return get_preset(preset)
        except KeyError as exc:
            raise ModelLoadError(str(exc.args[0])) from None
    found = preset_for_file(path)
    if found is None:
        raise ModelLoadError(
            f"no preset for {Path(path).name!r}: name one (params.yaml profiles.<profile>.model.preset, or "
            f"load_diffusion(..., preset=NAME)); known presets: {', '.join(PRESETS)}"
        )
    return found


def load_checkpoint(
    path: str | Path,
    preset: str | Preset | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Verify (optional sha256), read (weights_only), check against the preset, convert to a UNet2DModel."""
    path = Path(path).expanduser()
    spec = resolve_preset(path, preset)
    if not path.is_file():
        raise ModelLoadError(
            f"checkpoint file {path} not found. Preset {spec.name!r} ({spec.source}): download "
            f"{spec.filenames[0]} from {spec.url} and put it at that path."
        )
    digest = verify_sha256(path, sha256) if sha256 else None
    state_dict = read_state_dict(path)
    check_state_dict(state_dict, spec.arch, what=f"{path} (preset {spec.name!r})")
    unet = convert_checkpoint(state_dict, spec.arch, device=device)
    return LoadedCheckpoint(unet, spec, path, digest)
