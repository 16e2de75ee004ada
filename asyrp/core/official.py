"""Importing the official released f_t checkpoints (kwonminki/Asyrp_official ``checkpoint/*.pth``) as directions.

The official training loop (diffusion_latent.py, ``run_training``, "# Save") writes
``checkpoint/{attr}_LC_{category}_t{t_0}_ninv{n_inv_step}_ngen{n_train_step}_{it_out}[_{k}].pth``, a dict
``{"0": layer_0.state_dict(), ..., "optimizer": ..., "scheduler": ...}`` with one entry per DeltaBlock
(``--get_h_num``; the released files have one, and ``run_test`` reads key "0"). The name carries t_0 (the inversion
depth, ``--t_0``), n_inv and n_gen (``--n_train_step``: the training grid, so ``n_train_steps`` here) but *not*
t_edit, which the official code picks at run time (LPIPS curves or ``--user_defined_t_edit``): pass it.

Layouts (official key -> project key):
    official          models/ddpm/diffusion.py DeltaBlock: conv1, temb_proj, norm2 -> norm, conv2
    official_guided   models/improved_ddpm/unet.py and models/guided_diffusion/unet.py DeltaBlock:
                      in_layers.{0,2}, emb_layers.1, out_layers.{0,3} (the same names here)

    python -m asyrp.core.official import-official smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth --out dirs --t-edit 513
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .ddim import timestep_grid
from .directions import DirectionConfig, build_direction, save_direction

Tensor = torch.Tensor
_DDPM_KEYS = ("conv1", "temb_proj", "norm2", "conv2")
_GUIDED_KEYS = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
KEY_MAPS = {  # kind -> {official key: project key}
    "official": {f"{m}.{p}": f"{'norm' if m == 'norm2' else m}.{p}" for m in _DDPM_KEYS for p in ("weight", "bias")},
    "official_guided": {f"{m}.{p}": f"{m}.{p}" for m in _GUIDED_KEYS for p in ("weight", "bias")},
}
_DIMS = {
    "official": ("conv1.weight", "temb_proj.weight"),
    "official_guided": ("in_layers.2.weight", "emb_layers.1.weight"),
}
OFFICIAL_NAME = re.compile(
    r"^(?P<attribute>.+?)_LC_(?P<category>.+)_t(?P<t_0>\d+)_ninv(?P<n_inv_steps>\d+)_ngen(?P<n_train_steps>\d+)"
    r"_(?P<iteration>\d+)(?:_(?P<checkpoint>\d+))?$"
)


class OfficialImportError(ValueError):
    """An official checkpoint that cannot be imported (the message says why, in one line)."""


def parse_official_name(path: str | Path) -> dict | None:
    """Fields of an official file name (diffusion_latent.py ``save_name``), or None if it is not one.

    ``smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth`` -> attribute "smiling", category "CelebA_HQ", t_0 999,
    n_inv_steps 40, n_train_steps 40, iteration 0 (checkpoint: the mid-epoch save index, or None)."""
    m = OFFICIAL_NAME.match(Path(path).name.removesuffix(".pth"))
    if m is None:
        return None
    fields = m.groupdict()
    return {k: v if k in ("attribute", "category") or v is None else int(v) for k, v in fields.items()}


def read_official(path: str | Path) -> dict:
    """The checkpoint's dict, read with ``torch.load(weights_only=True)`` on the CPU (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is one message, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        raise OfficialImportError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise OfficialImportError(f"{path}: holds a {type(data).__name__}, not the official dict of DeltaBlocks")
    return data


def select_block(data: dict, layer: int | None = None, what: str = "file") -> tuple[str, dict[str, Tensor]]:
    """(key, state dict) of one DeltaBlock: the entry "<layer>" (None: the only one); a bare state dict as is."""
    if data and all(isinstance(v, Tensor) for v in data.values()) and not any(k.isdigit() for k in map(str, data)):
        return "", data  # a DeltaBlock's state_dict() saved on its own
    layers = {str(k): v for k, v in data.items() if str(k).isdigit()}
    tensors = sorted(k for k, v in layers.items() if isinstance(v, Tensor))
    if tensors:
        raise OfficialImportError(
            f"{what}: entries {tensors} are delta_h tensors (official --train_delta_h), not DeltaBlocks; "
            f"only DeltaBlock (--train_delta_block) checkpoints are imported"
        )
    if not layers:
        raise OfficialImportError(f"{what}: no DeltaBlock entries (keys '0', '1', ...); it has keys {sorted(data)}")
    if layer is None and len(layers) > 1:
        raise OfficialImportError(
            f"{what}: {len(layers)} DeltaBlocks {sorted(layers)} (official --get_h_num > 1, summed when editing); "
            f"choose one with layer / --layer"
        )
    key = str(layer) if layer is not None else next(iter(layers))
    if key not in layers:
        raise OfficialImportError(f"{what}: no DeltaBlock {key!r}; it has {sorted(layers)}")
    return key, layers[key]


def detect_layout(state: dict) -> str:
    """The direction kind whose official key layout shares the most keys with ``state`` (DDPM or guided)."""
    scores = {kind: len(set(state) & set(keys)) for kind, keys in KEY_MAPS.items()}
    kind = max(scores, key=scores.get)
    if scores[kind] == 0:
        raise OfficialImportError(
            f"keys {sorted(state)} match no official DeltaBlock layout (DDPM: conv1, temb_proj, norm2, conv2; "
            f"guided: in_layers, emb_layers, out_layers)"
        )
    return kind


def block_dims(state: dict, kind: str) -> tuple[int, int]:
    """(C, D): h channels from the first 1x1 conv (C_out, C, 1, 1), time-embedding width from the Linear (C, D)."""
    conv, linear = (state.get(k) for k in _DIMS[kind])
    shaped = [v for v in state.values() if isinstance(v, Tensor) and v.ndim]
    if not shaped:
        raise OfficialImportError(f"keys {sorted(state)} hold no tensors")
    c = int(conv.shape[0]) if isinstance(conv, Tensor) and conv.ndim == 4 else int(shaped[0].shape[0])
    d = int(linear.shape[1]) if isinstance(linear, Tensor) and linear.ndim == 2 else c
    return c, d


def fit_problems(state: dict, kind: str, expected: dict[str, Tensor]) -> list[str]:
    """Missing / unexpected official keys and shape differences against the project module's state dict."""
    names = KEY_MAPS[kind]
    missing = [k for k in names if k not in state]
    unexpected = sorted(k for k in state if k not in names)
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
    for off, proj in names.items():
        v = state.get(off)
        if off in state and not isinstance(v, Tensor):
            problems.append(f"{off} is a {type(v).__name__}, not a tensor")
        elif off in state and tuple(v.shape) != tuple(expected[proj].shape):
            problems.append(f"{off} has shape {tuple(v.shape)}, expected {tuple(expected[proj].shape)}")
    return problems


def _pick(name: str, given, from_name, flag: str):
    """An explicit value, else the one the file name carries; both and different is an error."""
    if given is not None and from_name is not None and int(given) != int(from_name):
        raise OfficialImportError(f"{name}={given} was given but the file name says {from_name}; drop {flag} or fix it")
    return given if given is not None else from_name


def official_config(
    path: Path,
    kind: str,
    h_shape: tuple[int, int, int],
    temb_channels: int,
    t_edit,
    n_train_steps,
    t_0,
    num_train_timesteps: int = 1000,
    **fields,
) -> DirectionConfig:
    """The DirectionConfig of an official file: t_0 / n_train_steps from its name, t_edit given; ``fields``:
    other DirectionConfig fields (source, target, model_id)."""
    parsed = parse_official_name(path) or {}
    n_train_steps = _pick("n_train_steps", n_train_steps, parsed.get("n_train_steps"), "--n-train-steps")
    t_0 = _pick("t_0", t_0, parsed.get("t_0"), "--t-0")
    if t_edit is None or n_train_steps is None:
        need = [f for f, v in (("--t-edit", t_edit), ("--n-train-steps", n_train_steps)) if v is None]
        carried = "the official name carries t_0, n_inv and n_gen, never t_edit" if parsed else "not an official name"
        raise OfficialImportError(f"{path.name}: pass {' and '.join(need)} ({carried})")
    T = num_train_timesteps
    t_0 = None if t_0 is None or int(t_0) == T - 1 else int(t_0)
    try:
        grid = timestep_grid(int(n_train_steps), T, "uniform", t_0)
    except ValueError as exc:
        raise OfficialImportError(f"{path.name}: {exc}") from None
    if not 0 <= int(t_edit) <= int(grid[-1]):
        raise OfficialImportError(f"{path.name}: t_edit={t_edit} is outside the grid [0, {int(grid[-1])}]")
    info = {"imported_from": "kwonminki/Asyrp_official", "file": path.name}
    info.update({k: parsed[k] for k in ("attribute", "category", "n_inv_steps", "iteration") if k in parsed})
    return DirectionConfig(
        kind=kind,
        h_shape=h_shape,
        temb_channels=temb_channels,
        num_train_timesteps=T,
        t_edit=int(t_edit),
        n_train_steps=int(n_train_steps),
        spacing="uniform",
        t_0=t_0,
        train=info,
        **fields,
    )


def import_official(
    path: str | Path,
    out: str | Path,
    t_edit: int | None = None,
    n_train_steps: int | None = None,
    *,
    t_0: int | None = None,
    num_train_timesteps: int = 1000,
    h_size: int = 8,
    channels: int | None = None,
    temb_channels: int | None = None,
    layer: int | None = None,
    source: str = "",
    target: str = "",
    model_id: str = "",
    name: str | None = None,
) -> Path:
    """Convert an official f_t checkpoint to ``<out>/<name>.safetensors + .json``; returns that stem.

    The layout (DDPM or guided DeltaBlock) is detected from the keys; C and D are read from the weights unless
    ``channels`` / ``temb_channels`` pin them; h is (C, h_size, h_size) (8 x 8 for all the paper's 256-px models).
    Raises OfficialImportError (one line) for a file that does not fit or a value that is missing."""
    path = Path(path)
    key, state = select_block(read_official(path), layer, path.name)
    kind = detect_layout(state)
    c, d = block_dims(state, kind)
    c, d = channels or c, temb_channels or d
    config = official_config(
        path, kind, (c, h_size, h_size), d, t_edit, n_train_steps, t_0, num_train_timesteps,
        source=source, target=target, model_id=model_id,
    )  # fmt: skip
    config.train["layer"] = key
    direction = build_direction(config)
    problems = fit_problems(state, kind, direction.state_dict())
    if problems:
        raise OfficialImportError(f"{path.name} does not fit kind {kind!r} (C={c}, D={d}): " + "; ".join(problems))
    direction.load_state_dict({proj: state[off] for off, proj in KEY_MAPS[kind].items()}, strict=True)
    return save_direction(direction, config, Path(out) / (name or path.name.removesuffix(".pth")))


def main(argv: list[str] | None = None) -> int:
    """``python -m asyrp.core.official import-official FILE.pth --out DIR [--t-edit N ...]``; errors exit 2."""
    ap = argparse.ArgumentParser(prog="python -m asyrp.core.official", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-official", help="an official checkpoint/*.pth -> <out>/<name>.safetensors + .json")
    p.add_argument("file", help="an official f_t checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--t-edit", type=int, help="t_edit the direction was trained with (never in the official name)")
    p.add_argument("--n-train-steps", type=int, help="training generative steps (default: ngen<N> of the name)")
    p.add_argument("--t-0", type=int, help="inversion depth (default: t<N> of the name, else T - 1)")
    p.add_argument("--num-train-timesteps", type=int, default=1000)
    p.add_argument("--h-size", type=int, default=8, help="spatial size of h-space (8 for 256-px models)")
    p.add_argument("--channels", type=int, help="expected C (default: read from the weights)")
    p.add_argument("--temb-channels", type=int, help="expected time-embedding width (default: from the weights)")
    p.add_argument("--layer", type=int, help="which DeltaBlock of a --get_h_num > 1 file")
    p.add_argument("--source", default="", help="source prompt (metadata)")
    p.add_argument("--target", default="", help="target prompt (metadata)")
    p.add_argument("--model-id", default="", help="the diffusion model it belongs to (checked when editing)")
    p.add_argument("--name", help="output stem (default: the file's)")
    a = ap.parse_args(argv)
    try:
        stem = import_official(
            a.file, a.out, a.t_edit, a.n_train_steps, t_0=a.t_0, num_train_timesteps=a.num_train_timesteps,
            h_size=a.h_size, channels=a.channels, temb_channels=a.temb_channels, layer=a.layer, source=a.source,
            target=a.target, model_id=a.model_id, name=a.name,
        )  # fmt: skip
    except (OfficialImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = DirectionConfig.from_json(stem.with_suffix(".json").read_text()).kind
    print(f"{a.file} -> {stem}.safetensors + {stem.name}.json (kind {kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
