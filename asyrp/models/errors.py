"""What every loader in `asyrp.models` raises, and the network probe that decides what its message says.

Leaf module (standard library only), so `archs`, `clip`, `perceptual`, `segment` and `asyrp.toy.models` import
it without importing the diffusion loader.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache


class ModelLoadError(RuntimeError):
    """A model, CLIP or LPIPS checkpoint could not be loaded; the message says how to get it."""


@lru_cache(maxsize=8)
def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """One quick TCP probe, so an offline machine fails in seconds rather than after retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """True when $HF_HUB_OFFLINE is set or huggingface.co cannot be reached."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not host_reachable("huggingface.co")
