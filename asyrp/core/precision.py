"""Reduced precision where it pays: bfloat16 autocast on CPUs with bf16 matrix instructions.

On Intel Sapphire Rapids (AVX512-BF16, AMX-BF16) oneDNN runs bf16 convolutions about 2x faster than float32; on
CPUs without those instructions bf16 is emulated and slower, so "auto" turns it on only where the CPU reports
them. Weights stay float32 (autocast casts per op); losses and DDIM arithmetic stay float32.
"""

from __future__ import annotations

import contextlib
import os
import platform
from functools import cache

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names


@cache
def cpu_bf16_supported() -> bool:
    """True when this CPU has bf16 matrix instructions (Linux: /proc/cpuinfo flags; elsewhere False)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_bf16(choice: str | bool, device: torch.device | str = "cpu") -> bool:
    """``auto`` / ``on`` / ``off`` (or a bool) -> whether to autocast to bfloat16 on ``device``.

    ``auto``: on for CPUs with bf16 instructions (``ASYRP_CPU_BF16=0`` turns it off), off on other devices
    (CUDA callers pick their dtype explicitly)."""
    if isinstance(choice, bool):
        return choice
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    return torch.device(device).type == "cpu" and cpu_bf16_supported() and os.environ.get("ASYRP_CPU_BF16") != "0"


DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """A profile's ``dtype`` -> the U-Net's autocast dtype (None: float32). ``auto``: bfloat16 on a CPU with
    bf16 instructions (`resolve_bf16`), float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if resolve_bf16("auto", device) else None
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def autocast_bf16(enabled: bool, device: torch.device | str = "cpu"):
    """torch.autocast to bfloat16 on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
