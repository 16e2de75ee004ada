"""State-dict conversion: guided-diffusion ``UNetModel`` and DDPM ``Model`` checkpoints -> diffusers ``UNet2DModel``.

Both architectures are exactly a ``UNet2DModel`` with the right config, so the converted model runs through
:class:`asyrp.core.hspace.HUNet` (h-space split, inversion, training, editing) unchanged. Correspondence:

    guided-diffusion (openai/guided-diffusion unet.py)   diffusers UNet2DModel
    timestep_embedding: [cos, sin], freqs / half           Timesteps(flip_sin_to_cos=True, freq_shift=0)
    time_embed.{0,2}                                       time_embedding.linear_{1,2}
    input_blocks.0.0                                       conv_in
    input_blocks.k = ResBlock [+ AttentionBlock]           down_blocks[level].resnets[j] [+ .attentions[j]]
    input_blocks.k = ResBlock(down=True) | Downsample      down_blocks[level].downsamplers[0] (resnet | conv)
    middle_block.{0,1,2}                                   mid_block.resnets[0], .attentions[0], .resnets[1]
    output_blocks.k = ResBlock [+ Attn] [+ ResBlock(up)]   up_blocks[n-1-level].resnets[i] [+ ...] [+ upsamplers[0]]
    out.{0,2}                                              conv_norm_out, conv_out
    ResBlock in_layers.{0,2} emb_layers.1 out_layers.{0,3} norm1, conv1, time_emb_proj, norm2, conv2
      skip_connection (1x1)                                conv_shortcut
      use_scale_shift_norm: h = norm(h) (1 + scale) + shift resnet_time_scale_shift="scale_shift"
    AttentionBlock norm, qkv (conv1d, 3C), proj_out       group_norm, to_q / to_k / to_v, to_out[0]
      QKVAttentionLegacy: qkv channels (heads, 3, ch)      heads split after q/k/v (permuted here)
      QKVAttention (new order): (3, heads, ch)             plain chunk

    DDPM Model (pesser/pytorch_diffusion)                  diffusers UNet2DModel
    get_timestep_embedding: [sin, cos], freqs / (half-1)   Timesteps(flip_sin_to_cos=False, freq_shift=1)
    temb.dense.{0,1}, conv_in, norm_out, conv_out          time_embedding.linear_{1,2}, conv_in, conv_norm_out, ...
    down[i].block[j] / .attn[j] / .downsample.conv         down_blocks[i].resnets[j] / .attentions[j] / .downsamplers
    mid.block_1, mid.attn_1, mid.block_2                   mid_block.resnets[0], .attentions[0], .resnets[1]
    up[i].block[j] / .attn[j] / .upsample.conv             up_blocks[n-1-i]... (``up`` is stored low-res last)
    ResnetBlock norm1 conv1 temb_proj norm2 conv2 nin_shortcut   norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
    AttnBlock norm q k v proj_out (1x1 convs), 1 head      group_norm to_q to_k to_v to_out[0]
    Downsample: pad (0,1,0,1), conv stride 2 padding 0     downsample_padding=0 (same asymmetric pad)
    GroupNorm eps 1e-6                                     norm_eps=1e-6

``expected_shapes(arch)`` gives the source checkpoint's keys and shapes (written from the checkpoint layout,
checked against the reference modules in tests), ``convert_state_dict`` maps a checked state dict, and
``unet_config`` gives the ``UNet2DModel`` config. One thing a ``UNet2DModel`` config cannot express: a fixed
*number* of heads over attention layers of different widths (``num_head_channels=-1`` with attention at
several widths, as in improved-diffusion's models). ``build_unet`` then sets each attention's heads in
memory (exact), and ``save_diffusers`` refuses to write a folder whose config would lose it.

``build_unet`` tags the model's config with the source family (``ARCH_FAMILY_KEY``: "guided" | "ddpm"; a private
key, so it survives ``save_pretrained`` / ``from_pretrained``); ``arch_family(unet)`` reads it back (None: untagged,
e.g. a hub DDPM), and picks the official f_t for the model (``asyrp.core.directions.official_kind``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .presets import ArchConfig, DDPMUNetConfig, GuidedUNetConfig

Tensor = torch.Tensor
ARCH_FAMILY_KEY = "_asyrp_arch_family"


class ConversionError(ValueError):
    """The architecture has no exact UNet2DModel equivalent (the message says which feature)."""


# --- the plan: one entry per source module ----------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    """One source tensor: its key, shape, and the diffusers tensors made from it."""

    src: str
    shape: tuple[int, ...]
    outputs: tuple[tuple[str, Callable[[Tensor], Tensor]], ...]


def _same(t: Tensor) -> Tensor:
    return t


def _squeeze_1x1(t: Tensor) -> Tensor:
    """(out, in, 1) or (out, in, 1, 1) conv weight -> (out, in) linear weight."""
    return t.reshape(t.shape[0], t.shape[1])


def _copy(src: str, dst: str, shape: tuple[int, ...], fn=_same) -> _Param:
    return _Param(src, tuple(shape), ((dst, fn),))


def _linear(src: str, dst: str, n_in: int, n_out: int) -> list[_Param]:
    return [_copy(f"{src}.weight", f"{dst}.weight", (n_out, n_in)), _copy(f"{src}.bias", f"{dst}.bias", (n_out,))]


def _conv(src: str, dst: str, n_in: int, n_out: int, k: int = 3) -> list[_Param]:
    return [_copy(f"{src}.weight", f"{dst}.weight", (n_out, n_in, k, k)), _copy(f"{src}.bias", f"{dst}.bias", (n_out,))]


def _norm(src: str, dst: str, c: int) -> list[_Param]:
    return [_copy(f"{src}.weight", f"{dst}.weight", (c,)), _copy(f"{src}.bias", f"{dst}.bias", (c,))]


@dataclass(frozen=True)
class _Attn:
    """Heads of one diffusers attention module (for the in-memory head fix-up)."""

    dst: str
    channels: int
    heads: int


class _Plan:
    def __init__(self):
        self.params: list[_Param] = []
        self.attns: list[_Attn] = []

    def add(self, params: list[_Param]) -> None:
        self.params += params


# --- guided-diffusion -------------------------------------------------------------------------------


def _guided_res(plan: _Plan, src: str, dst: str, n_in: int, n_out: int, temb: int, scale_shift: bool) -> None:
    plan.add(_norm(f"{src}.in_layers.0", f"{dst}.norm1", n_in))
    plan.add(_conv(f"{src}.in_layers.2", f"{dst}.conv1", n_in, n_out))
    plan.add(_linear(f"{src}.emb_layers.1", f"{dst}.time_emb_proj", temb, 2 * n_out if scale_shift else n_out))
    plan.add(_norm(f"{src}.out_layers.0", f"{dst}.norm2", n_out))
    plan.add(_conv(f"{src}.out_layers.3", f"{dst}.conv2", n_out, n_out))
    if n_in != n_out:
        plan.add(_conv(f"{src}.skip_connection", f"{dst}.conv_shortcut", n_in, n_out, k=1))


def _qkv_split(c: int, heads: int, new_order: bool, which: int, is_weight: bool) -> Callable[[Tensor], Tensor]:
    """q (0), k (1) or v (2) out of guided-diffusion's fused qkv conv1d, in diffusers' head-major layout.

    Legacy order (QKVAttentionLegacy): output channel = ((head * 3 + which) * ch + i); new order
    (QKVAttention): ((which * heads + head) * ch + i). diffusers: to_q's channel = head * ch + i.
    """
    ch = c // heads

    def split(t: Tensor) -> Tensor:
        rest = (c,) if is_weight else ()
        t = t.reshape(3 * c, *rest)
        t = t.reshape(3, heads, ch, *rest)[which] if new_order else t.reshape(heads, 3, ch, *rest)[:, which]
        return t.reshape(c, *rest).contiguous()

    return split


def _guided_attn(plan: _Plan, src: str, dst: str, c: int, heads: int, new_order: bool) -> None:
    if c % heads:
        raise ConversionError(f"{src}: {c} channels do not split into {heads} heads")
    plan.add(_norm(f"{src}.norm", f"{dst}.group_norm", c))
    names = ("to_q", "to_k", "to_v")
    plan.params.append(
        _Param(
            f"{src}.qkv.weight",
            (3 * c, c, 1),
            tuple((f"{dst}.{n}.weight", _qkv_split(c, heads, new_order, i, True)) for i, n in enumerate(names)),
        )
    )
    plan.params.append(
        _Param(
            f"{src}.qkv.bias",
            (3 * c,),
            tuple((f"{dst}.{n}.bias", _qkv_split(c, heads, new_order, i, False)) for i, n in enumerate(names)),
        )
    )
    plan.add([_copy(f"{src}.proj_out.weight", f"{dst}.to_out.0.weight", (c, c, 1), _squeeze_1x1)])
    plan.add([_copy(f"{src}.proj_out.bias", f"{dst}.to_out.0.bias", (c,))])
    plan.attns.append(_Attn(dst, c, heads))


def _guided_heads(cfg: GuidedUNetConfig, c: int, upsample: bool = False) -> int:
    if cfg.num_head_channels != -1:
        if c % cfg.num_head_channels:
            raise ConversionError(f"{c} attention channels do not split into heads of {cfg.num_head_channels}")
        return c // cfg.num_head_channels
    if upsample and cfg.num_heads_upsample != -1:
        return cfg.num_heads_upsample
    return cfg.num_heads


def _guided_plan(cfg: GuidedUNetConfig) -> _Plan:
    """Walks guided-diffusion's ``UNetModel.__init__`` and records each module with its diffusers name."""
    plan, mc, mult, ss = _Plan(), cfg.model_channels, cfg.mult, cfg.use_scale_shift_norm
    temb = 4 * mc
    if int(mult[0] * mc) != mc:
        raise ConversionError(
            f"channel_mult[0] = {mult[0]}: the time embedding takes model_channels ({mc}) inputs but the first "
            f"level has {int(mult[0] * mc)} channels; UNet2DModel ties both to block_out_channels[0]"
        )
    plan.add(_linear("time_embed.0", "time_embedding.linear_1", mc, temb))
    plan.add(_linear("time_embed.2", "time_embedding.linear_2", temb, temb))
    ch = mc
    plan.add(_conv("input_blocks.0.0", "conv_in", cfg.in_channels, ch))
    chans, ds, k, n = [ch], 1, 1, len(mult)
    for level, m in enumerate(mult):
        for j in range(cfg.num_res_blocks):
            out = int(m * mc)
            _guided_res(plan, f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", ch, out, temb, ss)
            ch = out
            if ds in cfg.attention_ds:
                heads = _guided_heads(cfg, ch)
                dst = f"down_blocks.{level}.attentions.{j}"
                _guided_attn(plan, f"input_blocks.{k}.1", dst, ch, heads, cfg.use_new_attention_order)
            chans.append(ch)
            k += 1
        if level != n - 1:
            dst = f"down_blocks.{level}.downsamplers.0"
            if cfg.resblock_updown:
                _guided_res(plan, f"input_blocks.{k}.0", dst, ch, ch, temb, ss)
            else:
                plan.add(_conv(f"input_blocks.{k}.0.op", f"{dst}.conv", ch, ch))
            chans.append(ch)
            ds *= 2
            k += 1
    _guided_res(plan, "middle_block.0", "mid_block.resnets.0", ch, ch, temb, ss)
    heads = _guided_heads(cfg, ch)
    _guided_attn(plan, "middle_block.1", "mid_block.attentions.0", ch, heads, cfg.use_new_attention_order)
    _guided_res(plan, "middle_block.2", "mid_block.resnets.1", ch, ch, temb, ss)
    k = 0
    for level, m in reversed(list(enumerate(mult))):
        u = n - 1 - level
        for i in range(cfg.num_res_blocks + 1):
            skip, out = chans.pop(), int(m * mc)
            _guided_res(plan, f"output_blocks.{k}.0", f"up_blocks.{u}.resnets.{i}", ch + skip, out, temb, ss)
            ch, idx = out, 1
            if ds in cfg.attention_ds:
                heads = _guided_heads(cfg, ch, upsample=True)
                dst = f"up_blocks.{u}.attentions.{i}"
                _guided_attn(plan, f"output_blocks.{k}.1", dst, ch, heads, cfg.use_new_attention_order)
                idx = 2
            if level and i == cfg.num_res_blocks:
                dst = f"up_blocks.{u}.upsamplers.0"
                if cfg.resblock_updown:
                    _guided_res(plan, f"output_blocks.{k}.{idx}", dst, ch, ch, temb, ss)
                else:
                    plan.add(_conv(f"output_blocks.{k}.{idx}.conv", f"{dst}.conv", ch, ch))
                ds //= 2
            k += 1
    plan.add(_norm("out.0", "conv_norm_out", ch))
    plan.add(_conv("out.2", "conv_out", mc, cfg.out_channels))
    return plan


def _guided_unet_config(cfg: GuidedUNetConfig, plan: _Plan) -> dict:
    mc, mult = cfg.model_channels, cfg.mult
    attn = [2**level in cfg.attention_ds for level in range(len(mult))]
    down = tuple(
        "AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D") for a in attn
    )
    up = tuple(
        "AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D")
        for a in reversed(attn)
    )
    head_dims = {a.channels // a.heads for a in plan.attns}
    return dict(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        layers_per_block=cfg.num_res_blocks,
        block_out_channels=tuple(int(m * mc) for m in mult),
        down_block_types=down,
        up_block_types=up,
        downsample_type="resnet" if cfg.resblock_updown else "conv",
        upsample_type="resnet" if cfg.resblock_updown else "conv",
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        time_embedding_dim=4 * mc,
        resnet_time_scale_shift="scale_shift" if cfg.use_scale_shift_norm else "default",
        attention_head_dim=head_dims.pop() if len(head_dims) == 1 else None,
        norm_num_groups=32,
        attn_norm_num_groups=32,  # the middle attention has a GroupNorm (diffusers drops it for scale_shift)
        norm_eps=1e-5,
        dropout=cfg.dropout,
    )


# --- DDPM ---------------------------------------------------------------------------------------------


def _ddpm_res(plan: _Plan, src: str, dst: str, n_in: int, n_out: int, temb: int) -> None:
    plan.add(_norm(f"{src}.norm1", f"{dst}.norm1", n_in))
    plan.add(_conv(f"{src}.conv1", f"{dst}.conv1", n_in, n_out))
    plan.add(_linear(f"{src}.temb_proj", f"{dst}.time_emb_proj", temb, n_out))
    plan.add(_norm(f"{src}.norm2", f"{dst}.norm2", n_out))
    plan.add(_conv(f"{src}.conv2", f"{dst}.conv2", n_out, n_out))
    if n_in != n_out:
        plan.add(_conv(f"{src}.nin_shortcut", f"{dst}.conv_shortcut", n_in, n_out, k=1))


def _ddpm_attn(plan: _Plan, src: str, dst: str, c: int) -> None:
    plan.add(_norm(f"{src}.norm", f"{dst}.group_norm", c))
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        plan.add([_copy(f"{src}.{a}.weight", f"{dst}.{b}.weight", (c, c, 1, 1), _squeeze_1x1)])
        plan.add([_copy(f"{src}.{a}.bias", f"{dst}.{b}.bias", (c,))])
    plan.attns.append(_Attn(dst, c, 1))


def _ddpm_plan(cfg: DDPMUNetConfig) -> _Plan:
    """Walks the DDPM ``Model.__init__`` (pytorch_diffusion / ddim / Asyrp ``DDPM``)."""
    if cfg.ch_mult[0] != 1:
        raise ConversionError(f"ch_mult[0] = {cfg.ch_mult[0]}: UNet2DModel's conv_in feeds the first level directly")
    if not cfg.resamp_with_conv:
        raise ConversionError("resamp_with_conv=False (average-pool resampling) has no UNet2DModel equivalent")
    plan, ch, temb, n = _Plan(), cfg.ch, 4 * cfg.ch, len(cfg.ch_mult)
    plan.add(_linear("temb.dense.0", "time_embedding.linear_1", ch, temb))
    plan.add(_linear("temb.dense.1", "time_embedding.linear_2", temb, temb))
    plan.add(_conv("conv_in", "conv_in", cfg.in_channels, ch))
    res, in_mult = cfg.resolution, (1, *cfg.ch_mult)
    block_in = ch
    for i in range(n):
        block_in, block_out = ch * in_mult[i], ch * cfg.ch_mult[i]
        for j in range(cfg.num_res_blocks):
            _ddpm_res(plan, f"down.{i}.block.{j}", f"down_blocks.{i}.resnets.{j}", block_in, block_out, temb)
            block_in = block_out
            if res in cfg.attn_resolutions:
                _ddpm_attn(plan, f"down.{i}.attn.{j}", f"down_blocks.{i}.attentions.{j}", block_in)
        if i != n - 1:
            plan.add(_conv(f"down.{i}.downsample.conv", f"down_blocks.{i}.downsamplers.0.conv", block_in, block_in))
            res //= 2
    _ddpm_res(plan, "mid.block_1", "mid_block.resnets.0", block_in, block_in, temb)
    _ddpm_attn(plan, "mid.attn_1", "mid_block.attentions.0", block_in)
    _ddpm_res(plan, "mid.block_2", "mid_block.resnets.1", block_in, block_in, temb)
    for i in reversed(range(n)):
        u, block_out = n - 1 - i, ch * cfg.ch_mult[i]
        for j in range(cfg.num_res_blocks + 1):
            skip = ch * (in_mult[i] if j == cfg.num_res_blocks else cfg.ch_mult[i])
            _ddpm_res(plan, f"up.{i}.block.{j}", f"up_blocks.{u}.resnets.{j}", block_in + skip, block_out, temb)
            block_in = block_out
            if res in cfg.attn_resolutions:
                _ddpm_attn(plan, f"up.{i}.attn.{j}", f"up_blocks.{u}.attentions.{j}", block_in)
        if i != 0:
            plan.add(_conv(f"up.{i}.upsample.conv", f"up_blocks.{u}.upsamplers.0.conv", block_in, block_in))
            res *= 2
    plan.add(_norm("norm_out", "conv_norm_out", block_in))
    plan.add(_conv("conv_out", "conv_out", block_in, cfg.out_ch))
    return plan


def _ddpm_unet_config(cfg: DDPMUNetConfig) -> dict:
    res = [cfg.resolution // 2**i for i in range(len(cfg.ch_mult))]
    attn = [r in cfg.attn_resolutions for r in res]
    return dict(
        sample_size=cfg.resolution,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_ch,
        layers_per_block=cfg.num_res_blocks,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        downsample_padding=0,  # DDPM's Downsample: pad (0, 1, 0, 1), then a stride-2 conv without padding
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,  # one head per attention layer
        norm_num_groups=32,
        norm_eps=1e-6,
        dropout=cfg.dropout,
    )


# --- public API -------------------------------------------------------------------------------------------


def _plan(arch: ArchConfig) -> _Plan:
    if isinstance(arch, GuidedUNetConfig):
        return _guided_plan(arch)
    if isinstance(arch, DDPMUNetConfig):
        return _ddpm_plan(arch)
    raise TypeError(f"unknown architecture config {type(arch).__name__}")


def unet_config(arch: ArchConfig) -> dict:
    """``UNet2DModel(**unet_config(arch))`` has the architecture of the checkpoint."""
    if isinstance(arch, GuidedUNetConfig):
        return _guided_unet_config(arch, _plan(arch))
    return _ddpm_unet_config(arch)


def expected_shapes(arch: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a source checkpoint of this architecture, with its shape (in the source's order)."""
    return {p.src: p.shape for p in _plan(arch).params}


def convert_state_dict(state_dict: dict[str, Tensor], arch: ArchConfig) -> dict[str, Tensor]:
    """Source state dict (keys and shapes as ``expected_shapes``) -> ``UNet2DModel`` state dict, float32.

    Raises KeyError for a missing key: check with :func:`asyrp.models.archs.checkpoint.check_state_dict` first for
    a message that lists every difference.
    """
    out: dict[str, Tensor] = {}
    for p in _plan(arch).params:
        t = state_dict[p.src]
        if t.is_floating_point():
            t = t.float()
        for dst, fn in p.outputs:
            out[dst] = fn(t)
    return out


def attention_heads(arch: ArchConfig) -> dict[str, int]:
    """Heads of each attention module of the converted model (diffusers module name -> heads)."""
    return {a.dst: a.heads for a in _plan(arch).attns}


def build_unet(arch: ArchConfig, device: str | torch.device = "cpu", seed: int | None = None):
    """A ``UNet2DModel`` with this architecture (random init; ``device='meta'`` for shapes only), heads fixed up."""
    from diffusers import UNet2DModel

    config = unet_config(arch)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet2DModel(**config)
    _fix_heads(unet, arch)
    unet.register_to_config(**{ARCH_FAMILY_KEY: arch.family})
    return unet


def arch_family(unet) -> str | None:
    """The family a converted UNet2DModel was built from ("guided" | "ddpm"), None for an untagged model."""
    return dict(getattr(unet, "config", None) or {}).get(ARCH_FAMILY_KEY)


def needs_head_fixup(arch: ArchConfig) -> bool:
    """True where the attention heads differ from what ``UNet2DModel``'s config alone would build."""
    return unet_config(arch)["attention_head_dim"] is None and isinstance(arch, GuidedUNetConfig)


def _fix_heads(unet, arch: ArchConfig) -> None:
    modules = dict(unet.named_modules())
    for name, heads in attention_heads(arch).items():
        attn = modules[name]
        if attn.heads != heads:
            c = attn.to_q.out_features
            attn.heads, attn.sliceable_head_dim, attn.scale = heads, heads, (c // heads) ** -0.5


def convert_checkpoint(state_dict: dict[str, Tensor], arch: ArchConfig, device: str | torch.device = "cpu"):
    """A ready ``UNet2DModel`` (eval mode, float32) holding the converted weights; strict load."""
    unet = build_unet(arch, device="meta")
    unet.load_state_dict(convert_state_dict(state_dict, arch), strict=True, assign=True)
    return unet.to(device).eval()


def save_diffusers(unet, arch: ArchConfig, schedule: dict, out: str | Path) -> Path:
    """Writes a diffusers folder (``config.json``, weights, ``scheduler_config.json``) that loads by path."""
    from diffusers import DDPMScheduler

    if needs_head_fixup(arch):
        raise ConversionError(
            "this architecture uses a fixed number of heads over attention layers of different widths, which a "
            "UNet2DModel config cannot express: load the checkpoint file directly instead of a converted folder"
        )
    out = Path(out)
    unet.save_pretrained(out)
    DDPMScheduler(**schedule).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m asyrp.models.archs.convert CHECKPOINT OUT [--preset NAME] [--sha256 HEX]``: a diffusers folder."""
    # checkpoint.py builds on this module; the CLI alone needs it back (moving the CLI would change its command)
    from .checkpoint import load_checkpoint
    from .presets import PRESETS

    ap = argparse.ArgumentParser(prog="python -m asyrp.models.archs.convert", description=main.__doc__)
    ap.add_argument("checkpoint", help="a guided-diffusion .pt or DDPM .ckpt state dict")
    ap.add_argument("out", help="output folder (diffusers format; pass it as the model id afterwards)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default: inferred from the file name")
    ap.add_argument("--sha256", help="expected sha256 of the checkpoint file")
    args = ap.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint, args.preset, sha256=args.sha256)
    path = save_diffusers(loaded.unet, loaded.preset.arch, loaded.preset.schedule, args.out)
    print(f"{args.checkpoint} ({loaded.preset.name}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
