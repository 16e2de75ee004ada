"""LPIPS (Zhang et al. 2018) through the ``lpips`` package; AlexNet backbone by default, as the paper.

``lpips.LPIPS(net='alex')`` downloads torchvision's ImageNet AlexNet at construction. When those
weights are neither cached nor downloadable, a random backbone is used only if the caller asks for it
(``allow_random_backbone=True``); the resulting metric is then flagged ``is_paper_metric = False`` and
every output made with it must say so (the pipeline writes the flag next to every number).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..seeding import seeded
from .errors import ModelLoadError, host_reachable

TORCHVISION_WEIGHTS = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
RANDOM_BACKBONE_NOTE = "LPIPS with a RANDOM backbone: not the paper's metric (AlexNet weights unavailable)"


def backbone_cached(net: str) -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[net]).exists()


class Perceptual(nn.Module):
    """LPIPS distance: images (B, 3, H, W) in [-1, 1] -> (B,) distances."""

    def __init__(self, metric: nn.Module, net: str, is_paper_metric: bool):
        super().__init__()
        self.metric = metric.eval().requires_grad_(False)
        self.net, self.is_paper_metric = net, is_paper_metric

    @property
    def note(self) -> str:
        return f"LPIPS({self.net})" if self.is_paper_metric else RANDOM_BACKBONE_NOTE

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.metric(x.float(), y.float(), normalize=False).flatten()


def load_lpips(net: str = "alex", allow_random_backbone: bool = False, device="cpu") -> Perceptual:
    """LPIPS with torchvision's pretrained backbone; a random one only behind the explicit flag."""
    import lpips

    if net not in TORCHVISION_WEIGHTS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(TORCHVISION_WEIGHTS)}")
    available = backbone_cached(net) or host_reachable("download.pytorch.org")
    if not available and not allow_random_backbone:
        raise ModelLoadError(
            f"LPIPS needs torchvision's ImageNet {net} weights ({TORCHVISION_WEIGHTS[net]}) in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} and download.pytorch.org is unreachable. Copy the "
            "file there from a machine with internet, or allow a random backbone explicitly "
            "(lpips.allow_random_backbone: true), which is NOT the paper's metric."
        )
    if not available:
        warnings.warn(RANDOM_BACKBONE_NOTE, stacklevel=2)
    # A random backbone is seeded, so its numbers (and the t_edit / t_boost chosen with them) are reproducible.
    with warnings.catch_warnings(), seeded(0):
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # "pretrained" deprecation
        metric = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not available, verbose=False)
    return Perceptual(metric, net, is_paper_metric=available).to(device)
