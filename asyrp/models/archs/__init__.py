"""The paper's other architectures as diffusers ``UNet2DModel``s: guided-diffusion (iDDPM / ADM) and original DDPM.

    from asyrp.models.archs import load_checkpoint, PRESETS
    loaded = load_checkpoint("pretrained/afhq_dog_4m.pt")      # preset "iddpm-afhq-dog-256", from the file name
    hunet = HUNet(loaded.unet)                                  # h-space: 512 x 8 x 8

``asyrp.models.load_diffusion`` dispatches ``.pt`` / ``.ckpt`` paths here; ``python -m asyrp.models.archs.convert``
writes a converted diffusers folder. See :mod:`.presets` for the checkpoints and their sources.
"""

from .checkpoint import (
    ChecksumMismatch,
    LoadedCheckpoint,
    StateDictMismatch,
    check_state_dict,
    is_checkpoint_path,
    load_checkpoint,
    read_state_dict,
    sha256_file,
)
from .convert import (
    ConversionError,
    attention_heads,
    build_unet,
    convert_checkpoint,
    convert_state_dict,
    expected_shapes,
    save_diffusers,
    unet_config,
)
from .presets import (
    ADM_256,
    ADM_LIGHT_256,
    COSINE_1000,
    DDPM_256,
    LINEAR_1000,
    PAPER_PRESETS,
    PRESETS,
    DDPMUNetConfig,
    GuidedUNetConfig,
    Preset,
    get_preset,
    preset_for_file,
    presets_table,
)

__all__ = [
    "ADM_256",
    "ADM_LIGHT_256",
    "COSINE_1000",
    "DDPM_256",
    "LINEAR_1000",
    "PAPER_PRESETS",
    "PRESETS",
    "ChecksumMismatch",
    "ConversionError",
    "DDPMUNetConfig",
    "GuidedUNetConfig",
    "LoadedCheckpoint",
    "Preset",
    "StateDictMismatch",
    "attention_heads",
    "build_unet",
    "check_state_dict",
    "convert_checkpoint",
    "convert_state_dict",
    "expected_shapes",
    "get_preset",
    "is_checkpoint_path",
    "load_checkpoint",
    "preset_for_file",
    "presets_table",
    "read_state_dict",
    "save_diffusers",
    "sha256_file",
    "unet_config",
]
