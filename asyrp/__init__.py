"""asyrp: semantic edit directions in the h-space of frozen diffusion models (Kwon et al., ICLR 2023).

Quick tour (see README.md):
    model = load_diffusion("google/ddpm-celebahq-256")           # or "offline:small"
    x_T = invert(model, x0)                                       # DDIM inversion, 40 steps
    direction, cfg = new_direction(model, "face", "smiling face", t_edit=513)
    train_direction(model, direction, AsyrpLoss(clip, "face", "smiling face"), data, TrainConfig(513))
    edited = asyrp_generate(model, x_T, [EditDirection(direction, cfg)], EditConfig(513, 167))
"""

from .api import invert, new_direction
from .core.config import EditConfig, LossConfig, TrainConfig
from .core.ddim import ddim_generate, ddim_invert, ddim_step, timestep_grid
from .core.directions import DirectionConfig, build_direction, check_compatible, load_direction, save_direction
from .core.edit import EditDirection, asyrp_generate, coefficient_sweep, mean_direction, random_latents
from .core.hspace import HUNet
from .core.losses import AsyrpLoss
from .core.schedule import Schedule, choose_schedule, lpips_curves
from .core.train import TrainBatch, tensor_batches, train_direction
from .models.diffusion import DiffusionModel, load_diffusion

__version__ = "0.1.0"
__all__ = [
    "AsyrpLoss",
    "DiffusionModel",
    "DirectionConfig",
    "EditConfig",
    "EditDirection",
    "HUNet",
    "LossConfig",
    "Schedule",
    "TrainBatch",
    "TrainConfig",
    "asyrp_generate",
    "build_direction",
    "check_compatible",
    "choose_schedule",
    "coefficient_sweep",
    "ddim_generate",
    "ddim_invert",
    "ddim_step",
    "invert",
    "load_diffusion",
    "load_direction",
    "lpips_curves",
    "mean_direction",
    "new_direction",
    "random_latents",
    "save_direction",
    "tensor_batches",
    "timestep_grid",
    "train_direction",
]
