"""Evaluation metrics of App. K: directional CLIP similarity S_dir (Eq. 17), segmentation consistency SC,
and the intervals reported with them.

    s = directional_similarity(clip, original, edited, "face", "smiling face")   # (B,) in [-1, 1]
    sc = segmentation_consistency(segmenter, original, edited)                   # (B,) in [0, 1]
    mean_ci(s)       # {"mean", "ci95", "n"}: 95% Student-t interval of the mean
    wilson_interval(12, 16)                                                       # (lo, hi) of a proportion

S_dir(x_edit, y_tgt; x_ref, y_src) = cos(E_I(x_edit) - E_I(x_ref), E_T(y_tgt) - E_T(y_src)) with plain
prompts (no templates) unless ``templates`` is given. SC = the fraction of pixels whose labels agree between
the segmentation maps of the reference (the original image, or its reconstruction) and the edited image.
Images are (B, 3, H, W) in [-1, 1] everywhere; work is done in batches of ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def mean_ci(values: Tensor | list[float]) -> dict:
    """Mean and the half-width of its 95% Student-t interval (NaN for a single value)."""
    from scipy.special import stdtrit  # the t quantile; scipy.stats would cost a second more to import

    v = torch.as_tensor(values).double().flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("mean_ci of no values")
    half = float(stdtrit(n - 1, 0.975) * v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": half, "n": n}


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n (votes treated as independent)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def directional_similarity(
    clip,
    original: Tensor,
    edited: Tensor,
    source: str,
    target: str,
    batch_size: int = 32,
    templates: list[str] | None = None,
) -> Tensor:
    """S_dir per image (Eq. 17): cos(E_I(edited) - E_I(original), E_T(target) - E_T(source)).

    ``clip`` is an :class:`asyrp.models.clip.ClipModel` (``encode_image`` of [-1, 1] images, ``text_direction``).
    (B, 3, H, W), (B, 3, H, W) -> (B,) on the CPU.
    """
    if original.shape != edited.shape:
        raise ValueError(f"original {tuple(original.shape)} and edited {tuple(edited.shape)} differ in shape")
    text_dir = clip.text_direction(source, target, templates)  # (D,) unit
    dev = clip.device
    e_orig = _batched(lambda x: clip.encode_image(x.to(dev)).float().cpu(), original, batch_size)  # (B, D)
    e_edit = _batched(lambda x: clip.encode_image(x.to(dev)).float().cpu(), edited, batch_size)
    return F.cosine_similarity(e_edit - e_orig, text_dir.float().cpu()[None], dim=-1, eps=1e-8)


def pixel_accuracy(labels_a: Tensor, labels_b: Tensor, ignore_index: int | None = None) -> Tensor:
    """Per-image fraction of pixels with the same label. (B, H, W) int, (B, H, W) int -> (B,) float64.

    With ``ignore_index``, pixels that carry that label in *both* maps are left out (an image whose every
    pixel is ignored scores NaN).
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"label maps differ in shape: {tuple(labels_a.shape)} vs {tuple(labels_b.shape)}")
    if labels_a.ndim == 2:
        labels_a, labels_b = labels_a[None], labels_b[None]
    if labels_a.ndim != 3:
        raise ValueError(f"label maps must be (B, H, W) or (H, W), got {tuple(labels_a.shape)}")
    same = (labels_a == labels_b).flatten(1).double()
    if ignore_index is None:
        return same.mean(dim=1)
    keep = ~((labels_a == ignore_index) & (labels_b == ignore_index)).flatten(1)
    return (same * keep).sum(dim=1) / keep.sum(dim=1).double()


@torch.no_grad()
def segment(segmenter, images: Tensor, batch_size: int = 8) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 label maps at the images' resolution, on the CPU."""
    dev = getattr(segmenter, "device", images.device)
    return _batched(lambda x: segmenter(x.to(dev)).cpu(), images, batch_size)


@torch.no_grad()
def segmentation_consistency(
    segmenter, reference: Tensor, edited: Tensor, batch_size: int = 8, ignore_index: int | None = None
) -> Tensor:
    """SC per image: pixel accuracy between the label maps of ``reference`` and ``edited``. -> (B,) in [0, 1].

    ``segmenter`` maps (B, 3, H, W) images in [-1, 1] to (B, H, W) labels (:mod:`asyrp.models.segment`).
    """
    if reference.shape != edited.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and edited {tuple(edited.shape)} differ in shape")
    return pixel_accuracy(
        segment(segmenter, reference, batch_size), segment(segmenter, edited, batch_size), ignore_index
    )
