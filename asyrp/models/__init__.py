"""Pretrained networks: diffusion U-Nets (hub ids, checkpoint files, ``offline:*`` built-ins), CLIP, LPIPS, segmenters.

    diffusion.py   load_diffusion, DiffusionModel, resolve_device (re-exported here)
    archs/         guided-diffusion / original-DDPM checkpoints converted to UNet2DModel, their presets
    clip.py        load_clip, ClipModel          perceptual.py  load_lpips        segment.py  load_segmenter
    errors.py      ModelLoadError (re-exported here), host_reachable, hub_offline
    offline.py     the built-in ``offline:*`` ids: id -> "module:function"

Only the diffusion loader is imported here: CLIP (open_clip), LPIPS and the segmenters load when their module is.
"""

from .diffusion import DiffusionModel, load_diffusion, resolve_device
from .errors import ModelLoadError

__all__ = ["DiffusionModel", "ModelLoadError", "load_diffusion", "resolve_device"]
