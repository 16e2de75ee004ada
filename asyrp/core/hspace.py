"""h-space: split a diffusers ``UNet2DModel`` into down path + middle block and up path (Sec. 3.3).

h_t is the output of the middle block, the bottleneck that no skip connection touches
(512 x 8 x 8 for the 256-px DDPM checkpoints). ``eps(x_t | delta_h)`` runs the up path on
``h + delta_h`` with the *same* skip activations and time embedding. So eps and eps(. | delta_h) need
the down path once and the up path twice, and the two up passes are batched into one call.
``asyrp_step`` is the asymmetric reverse step (Eq. 8) that editing, training and the analyses share.

The split mirrors ``UNet2DModel.forward`` of diffusers 0.42 line for line; ``tests/test_hspace.py``
checks that ``up(down(x))`` equals ``unet(x, t).sample`` on several configurations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .ddim import ddim_step

Tensor = torch.Tensor
DeltaHFn = Callable[[Tensor, int, Tensor], Tensor]
"""delta_h_fn(h, t, emb) -> delta_h, the signature of a direction f_t: h (B, C, h, w), emb (B, D) -> (B, C, h, w)."""


@dataclass
class DownState:
    """Everything the up path needs, computed once per (x_t, t).

    h:           (B, C, h, w) bottleneck feature map (middle-block output)
    res_samples: skip activations of the down path, in diffusers' order
    emb:         (B, D) time embedding (also the input of the official f_t's temb projection)
    timesteps:   (B,) timesteps, for the fourier-embedding rescale
    """

    h: Tensor
    res_samples: tuple[Tensor, ...]
    emb: Tensor
    timesteps: Tensor

    def repeat(self, n: int) -> DownState:
        """The same state tiled n times along the batch (to batch several up passes)."""
        return DownState(
            h=self.h.repeat(n, 1, 1, 1),
            res_samples=tuple(r.repeat(n, 1, 1, 1) for r in self.res_samples),
            emb=self.emb.repeat(n, 1),
            timesteps=self.timesteps.repeat(n),
        )


class HUNet(nn.Module):
    """A frozen ``UNet2DModel`` with access to h-space.

    ``forward(x, t)`` is the plain eps prediction (the first ``in_channels`` output channels, so
    learned-variance models work unchanged). ``down`` / ``up`` expose the split. ``autocast_dtype``
    (bfloat16 / float16) runs the U-Net under autocast: on CUDA either, on CPU bfloat16 only (CPU float16
    autocast is not faster; asyrp.core.precision says where CPU bf16 pays). eps, h and the time embedding are
    returned in float32, so f_t, the losses and the DDIM arithmetic stay float32; the skip activations keep
    the compute dtype (half the memory). ``precision(dtype)`` switches it for a block of code.
    """

    def __init__(self, unet: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.autocast_dtype = autocast_dtype
        cfg = unet.config
        self.in_channels = int(cfg.in_channels)
        self.sample_size = cfg.sample_size
        self.learned_variance = int(cfg.out_channels) == 2 * self.in_channels
        self._h_shapes: dict[int, tuple[int, int, int]] = {}

    # -- shapes -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def h_channels(self) -> int:
        """C of h-space: the middle block's output channels."""
        return int(self.unet.config.block_out_channels[-1])

    @property
    def temb_channels(self) -> int:
        return int(self.unet.time_embedding.linear_2.out_features)

    def h_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """(C, h, w) of h-space for square inputs of ``image_size`` (default: the model's), by a dry run."""
        size = image_size or self._image_size()
        if size not in self._h_shapes:
            with torch.no_grad():
                x = torch.zeros(1, self.in_channels, size, size, device=self.device)
                self._h_shapes[size] = tuple(self.down(x, 0).h.shape[1:])
        return self._h_shapes[size]

    def _image_size(self) -> int:
        s = self.sample_size
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the U-Net's convolutions run in: ``autocast_dtype`` where autocast offers it here (CUDA: any;
        CPU: bfloat16 only), else float32."""
        dtype, kind = self.autocast_dtype, self.device.type
        if dtype is None or kind not in ("cuda", "cpu") or (kind == "cpu" and dtype != torch.bfloat16):
            return torch.float32
        return dtype

    def _autocast(self):
        dtype = self.compute_dtype
        return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def precision(self, dtype: torch.dtype | None):
        """Run the block with ``autocast_dtype = dtype`` (None: float32), then restore it."""
        old, self.autocast_dtype = self.autocast_dtype, dtype
        try:
            yield self
        finally:
            self.autocast_dtype = old

    # -- the split ----------------------------------------------------------------------------
    def down(self, sample: Tensor, timestep: int | Tensor) -> DownState:
        """Down path + middle block of ``UNet2DModel.forward`` (steps 0-4). sample: (B, C, H, W)."""
        u, cfg = self.unet, self.unet.config
        with self._autocast():
            if cfg.center_input_sample:
                sample = 2 * sample - 1.0
            timesteps = torch.as_tensor(timestep, device=sample.device)
            if timesteps.ndim == 0:
                timesteps = timesteps[None]
            timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=sample.device)
            emb = u.time_embedding(u.time_proj(timesteps).to(dtype=u.dtype))
            if u.class_embedding is not None:
                raise ValueError("class-conditional UNet2DModels are not supported (Asyrp edits unconditional models)")
            skip_sample = sample
            sample = u.conv_in(sample)
            res_samples: tuple[Tensor, ...] = (sample,)
            for block in u.down_blocks:
                if hasattr(block, "skip_conv"):
                    sample, res, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
                else:
                    sample, res = block(hidden_states=sample, temb=emb)
                res_samples += res
            if u.mid_block is not None:
                sample = u.mid_block(sample, emb)
        return DownState(h=sample.float(), res_samples=res_samples, emb=emb.float(), timesteps=timesteps)

    def up(self, state: DownState, h: Tensor | None = None) -> Tensor:
        """Up path + output head (steps 5-6) on ``h`` (default ``state.h``); returns eps (B, C, H, W)."""
        u, cfg = self.unet, self.unet.config
        sample = state.h if h is None else h
        res_samples, emb = state.res_samples, state.emb
        with self._autocast():
            skip_sample = None
            for block in u.up_blocks:
                res = res_samples[-len(block.resnets) :]
                res_samples = res_samples[: -len(block.resnets)]
                if hasattr(block, "skip_conv"):
                    sample, skip_sample = block(sample, res, emb, skip_sample)
                else:
                    sample = block(sample, res, emb)
            sample = u.conv_out(u.conv_act(u.conv_norm_out(sample)))
            if skip_sample is not None:
                sample = sample + skip_sample
            if cfg.time_embedding_type == "fourier":
                sample = sample / state.timesteps.reshape((sample.shape[0],) + (1,) * (sample.ndim - 1))
        return sample[:, : self.in_channels].float()

    def forward(self, sample: Tensor, timestep: int | Tensor) -> Tensor:
        """Plain eps(x_t): one full pass."""
        return self.up(self.down(sample, timestep))

    def eps_pair(self, state: DownState, delta_h: Tensor, batched: bool | None = None) -> tuple[Tensor, Tensor]:
        """(eps(x_t), eps(x_t | delta_h)) from one down state. The two up passes run batched (``batched``; default
        on an accelerator) or one after the other (default on CPU, where a batch of 2B is no faster than two of
        B and tiling the skip activations costs ~5% of a step: docs/benchmarks.md)."""
        h_edit = state.h + delta_h.to(state.h.dtype)
        if batched is None:
            batched = state.h.device.type != "cpu"
        if not batched:
            return self.up(state), self.up(state, h_edit)
        b = state.h.shape[0]
        eps = self.up(state.repeat(2), torch.cat([state.h, h_edit]))
        return eps[:b], eps[b:]


class AsyrpStep(NamedTuple):
    """What one asymmetric step computes: x_{t-1}, eps, eps(. | delta_h) (B, C, H, W) and delta_h (B, C, h, w)."""

    prev_sample: Tensor
    eps: Tensor
    eps_edit: Tensor  # with a graph into delta_h when grad is enabled (training), for the loss on P_t(eps_edit)
    delta_h: Tensor


def asyrp_step(
    unet: HUNet, sample: Tensor, t: int, delta_h_fn: DeltaHFn, alpha_prod_t: float, alpha_prod_t_prev: float
) -> AsyrpStep:
    """x_{t-1} = sqrt(a_{t-1}) P_t(eps(x_t | delta_h)) + D_t(eps(x_t)), one down pass, two up passes (Eq. 8, eta 0)."""
    with torch.no_grad():  # the U-Net is frozen and delta_h sits after the mid block: no graph before h
        state = unet.down(sample, t)
    delta_h = delta_h_fn(state.h, t, state.emb)
    if torch.is_grad_enabled():  # training (Algorithm 2): a graph through the edited up pass into delta_h only
        with torch.no_grad():
            eps = unet.up(state)
        eps_edit = unet.up(state, state.h + delta_h)
    else:  # editing: both up passes at once where that is faster (eps_pair)
        eps, eps_edit = unet.eps_pair(state, delta_h)
    with torch.no_grad():  # the next x_t is data, not part of the graph
        prev = ddim_step(sample, eps, alpha_prod_t, alpha_prod_t_prev, eps_edit=eps_edit.detach())
    return AsyrpStep(prev, eps, eps_edit, delta_h)


def check_image_batch(x: Tensor, model: HUNet, name: str = "images") -> None:
    """Clear error for a batch that the model cannot take: shape (B, C, H, W) and range [-1, 1]."""
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"{name} have {x.shape[1]} channels; the model expects {model.in_channels}")
    size = model._image_size()
    if x.shape[-2:] != (size, size):
        raise ValueError(f"{name} are {tuple(x.shape[-2:])} pixels; the model expects ({size}, {size})")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"{name} must be scaled to [-1, 1] (got min {lo:.3g}, max {hi:.3g}); use asyrp.data.images.to_model_range"
        )
