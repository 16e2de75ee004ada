"""The built-in ``offline:*`` model ids: id -> ``"module:function"``, imported by name when first loaded.

By name, so `asyrp.models` never imports the packages that provide built-ins (`asyrp.toy.models` imports
`asyrp.models` at module level; a static import back would be a cycle), and loading one built-in imports
only its own module. Signatures:

- ``DIFFUSION[id](seed: int) -> (UNet2DModel, scheduler config dict)``, used by `load_diffusion`;
  ``offline:random:<preset>`` (any checkpoint preset, random weights) is a family, handled there.
- ``CLIP[id](device) -> ClipModel``, used by `load_clip`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .errors import ModelLoadError

DIFFUSION = {
    "offline:small": "asyrp.models.diffusion:small_unet",  # seeded random 32-px UNet: tests, plumbing
    "offline:ddpm-256-random": "asyrp.models.diffusion:ddpm_256_random",  # google/ddpm-*-256's shape, random
    "offline:toy": "asyrp.toy.models:toy_diffusion",  # the toy world's trained DDPM (asyrp/toy/assets)
}
CLIP = {
    "offline:tiny": "asyrp.models.clip:tiny_clip",  # seeded random open_clip CLIP for 32-px images
    "offline:toy-clip": "asyrp.toy.models:load_toy_clip",  # the toy world's trained CLIP (asyrp/toy/assets)
}


def builtin(registry: dict[str, str], model_id: str, what: str, extra: tuple[str, ...] = ()) -> Callable:
    """The loader function registered for ``model_id``; ModelLoadError naming the built-ins when unknown."""
    if model_id not in registry:
        names = ", ".join([*registry, *extra])
        raise ModelLoadError(f"unknown built-in {what} {model_id!r}; built-ins: {names}")
    module, _, function = registry[model_id].partition(":")
    return getattr(importlib.import_module(module), function)
