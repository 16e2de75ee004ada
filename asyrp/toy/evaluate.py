"""Oracle metrics of edits in the toy world (issue point 5): success, preservation, clean-edit rate.

For an edit whose target is one factor value (``colour = red``), on images that do not have it yet:

    success      the oracle reads the target value from the edited image
    preserved    every other factor unchanged, and IoU(edited mask, expected mask) > 0.7, where the
                 expected mask is the original shape re-rendered with the edited factor changed (the
                 same place, moved only as far as a grown shape needs to stay inside the image, as the
                 generator keeps every shape; for colour and background edits it is the original mask)
    clean_edit   success and preserved and the edited image is one clean shape (`Readout.clean`)

The no-edit baseline applies the same metrics to the reconstruction (the same process at coefficient 0).
"""

from __future__ import annotations

import re

import numpy as np

from . import oracle
from .generator import FACTORS

PRESERVE_IOU = 0.7


def edit_target(source: str, target: str) -> tuple[str, int]:
    """(factor, value index) an edit aims at, from the words its target prompt adds to the source prompt.

    "a shape" -> "a red shape" gives ("colour", 0). Raises ValueError when no factor value is added.
    """
    words = set(re.findall(r"[a-z]+", source.lower()))
    for w in re.findall(r"[a-z]+", target.lower()):
        if w in words:
            continue
        for k, values in FACTORS.items():
            if w in values:
                return k, values.index(w)
    raise ValueError(f"the toy oracle cannot tell what {source!r} -> {target!r} edits: name a factor value")


def score(read: oracle.Readout, f: dict[str, np.ndarray], factor: str, value: int, size: int = 32) -> dict:
    """Per-image metrics (dict of (N,) arrays) of edited images `read` against original factors `f`."""
    success = read.factors()[factor] == value
    others = np.ones(len(read), bool)
    for k in FACTORS:
        if k != factor:
            others &= read.factors()[k] == f[k]
    change = {factor: value} if factor in ("shape", "size") else {}
    iou = oracle.mask_iou(read.mask, oracle.expected_mask(f, size, **change))
    preserved = others & (iou > PRESERVE_IOU)
    return {
        "success": success, "preserved": preserved, "clean": read.clean, "clean_edit": success & preserved & read.clean,
        "others_kept": others, "mask_iou": iou, "fit_iou": read.fit_iou,
    }  # fmt: skip


def summarise(per_image: dict[str, np.ndarray]) -> dict:
    """Rates (mean of booleans) and mean IoUs, plus n."""
    out = {k: float(np.mean(v)) for k, v in per_image.items()}
    out["n"] = int(len(next(iter(per_image.values()))))
    return out


def attribute_score(read: oracle.Readout, f: dict, factor: str, value: int, size: int = 32) -> np.ndarray:
    """A continuous oracle score of the target attribute, for linearity (Sec. 5.3), (N,):

    colour: share of the foreground in the target colour; size: foreground area relative to the original
    (the sign follows the target: larger for `large`); shape: IoU with the target-shape mask minus IoU with
    the original-shape mask; background: share of the border in the target background.
    """
    if factor == "colour":
        return read.colour_share[:, value]
    if factor == "size":
        rel = read.area / np.maximum(oracle.expected_mask(f, size).reshape(len(read), -1).sum(1), 1)
        return rel if FACTORS["size"][value] == "large" else -rel
    if factor == "shape":
        return oracle.mask_iou(read.mask, oracle.expected_mask(f, size, shape=value)) - oracle.mask_iou(
            read.mask, oracle.expected_mask(f, size)
        )
    return (read.background == value).astype(float)
