"""The oracle: an exact readout of every generator factor from an image (shape, colour, size, background,
position and mask), and whether the image is one clean shape at all.

It inverts `asyrp.data.render_shapes` with the generator's own palette and geometry, no learning:

1. every pixel takes the nearest of the 7 palette colours (4 shape colours + 3 backgrounds);
2. background = the most frequent label on the image border; foreground = every other pixel;
3. colour = the most frequent foreground label (its share is the colour *purity*);
4. shape and size: render each (shape, size) template of the generator at the foreground's bounding-box
   centre (+-1 px) and keep the best IoU with the foreground mask; the template's centre is the position.

On generated images the readout is exact (tests check every factor on thousands of images). On model
outputs (DDPM samples, edits) `clean` says whether the image is a faithful single shape: the template fits
(IoU >= 0.8), the foreground is one colour (purity >= 0.9) and one connected blob, and pixels sit close
to the palette (mean distance <= 40 on the 0..255 scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .generator import BACKGROUNDS, COLOURS, FACTORS, SHAPES, SIZES, render_shapes, shape_extent

PALETTE_NAMES = tuple(COLOURS) + tuple(BACKGROUNDS)  # shape colours first, then backgrounds
PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), np.float32)  # (7, 3)
N_COL = len(COLOURS)
FIT_IOU, PURITY, MAX_PALETTE_DIST = 0.8, 0.9, 40.0


@dataclass
class Readout:
    """Per-image factors (indices into asyrp.data.FACTORS; -1 = none found) and quality numbers, all (N,)."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    mask: np.ndarray  # (N, S, S) bool foreground
    fit_iou: np.ndarray  # IoU of the best template with the mask
    purity: np.ndarray  # share of the foreground in its majority colour
    n_blobs: np.ndarray  # connected foreground components with >= 3 pixels
    palette_dist: np.ndarray  # mean distance of pixels to their palette colour (0..255 scale)
    area: np.ndarray  # foreground pixels
    colour_share: np.ndarray  # (N, 4) share of the foreground in each shape colour

    @property
    def clean(self) -> np.ndarray:
        """One faithful shape: template fit, one colour, one blob, palette colours."""
        return (
            (self.fit_iou >= FIT_IOU) & (self.purity >= PURITY) & (self.n_blobs == 1)
            & (self.palette_dist <= MAX_PALETTE_DIST) & (self.colour >= 0)
        )  # fmt: skip

    def factors(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in FACTORS}

    def names(self, i: int) -> dict[str, str]:
        return {k: (FACTORS[k][v] if v >= 0 else "none") for k, v in ((k, int(getattr(self, k)[i])) for k in FACTORS)}

    def __len__(self) -> int:
        return len(self.shape)


def to_uint8_hwc(images) -> np.ndarray:
    """(N, S, S, 3) uint8 from uint8 HWC arrays or float (N, 3, S, S) tensors in [-1, 1]."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            arr = images.cpu().numpy()
            return arr if arr.shape[-1] == 3 else arr.transpose(0, 2, 3, 1)
        images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        return images.transpose(0, 2, 3, 1)
    arr = np.asarray(images)
    return arr if arr.shape[-1] == 3 else arr.transpose(0, 2, 3, 1)


def _templates(size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Masks of every (shape, size) template centred at (c, c): (K, S + 2P, S + 2P), K = shapes x sizes."""
    pad = size  # big canvas so that shifting never clips
    big, keys = size + 2 * pad, []
    f = {"shape": [], "colour": [], "size": [], "background": [], "radius": [], "cx": [], "cy": []}
    for s in range(len(SHAPES)):
        for z, frac in enumerate(SIZES.values()):
            keys.append((s, z))
            for k, v in (("shape", s), ("colour", 0), ("size", z), ("background", 0), ("radius", frac * size),
                         ("cx", big // 2), ("cy", big // 2)):  # fmt: skip
                f[k].append(v)
    f = {k: np.array(v) for k, v in f.items()}
    masks = render_shapes(f, big)[..., 0] > 0  # red channel: colour 0 is red on black
    return masks, keys


_TEMPLATE_CACHE: dict[int, tuple[np.ndarray, list]] = {}


def _shifted(masks: np.ndarray, size: int, cx: int, cy: int) -> np.ndarray:
    """Templates (centred at big//2) moved so their centre is at integer (cx, cy) in an S x S image."""
    big = masks.shape[-1]
    ox, oy = big // 2 - cx, big // 2 - cy
    return masks[:, oy : oy + size, ox : ox + size]


def _blobs(mask: np.ndarray) -> int:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return n
    counts = np.bincount(lab.ravel())[1:]
    return int((counts >= 3).sum())


def read(images) -> Readout:
    """Oracle readout of (N, S, S, 3) uint8 images (or (N, 3, S, S) tensors in [-1, 1])."""
    img = to_uint8_hwc(images).astype(np.float32)
    n, size = img.shape[0], img.shape[1]
    if size not in _TEMPLATE_CACHE:
        _TEMPLATE_CACHE[size] = _templates(size)
    masks, keys = _TEMPLATE_CACHE[size]
    d = np.linalg.norm(img[:, :, :, None, :] - PALETTE[None, None, None], axis=-1)  # (N, S, S, 7)
    lab, dist = d.argmin(-1), d.min(-1)
    border = np.concatenate([lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]], axis=1)  # (N, 4S)
    out = {k: np.full(n, -1, np.int64) for k in ("shape", "colour", "size", "background", "cx", "cy", "n_blobs")}
    fit, purity, share = np.zeros(n), np.zeros(n), np.zeros((n, N_COL))
    fg = np.zeros((n, size, size), bool)
    for i in range(n):
        bg_lab = np.bincount(border[i], minlength=7).argmax()
        out["background"][i] = bg_lab - N_COL if bg_lab >= N_COL else -1
        m = lab[i] != bg_lab
        fg[i] = m
        if m.sum() == 0:
            out["n_blobs"][i] = 0
            continue
        counts = np.bincount(lab[i][m], minlength=7)
        share[i] = counts[:N_COL] / m.sum()
        c = counts.argmax()
        out["colour"][i] = c if c < N_COL else -1
        purity[i] = counts[c] / m.sum()
        ys, xs = np.nonzero(m)
        bx, by = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        best = (-1.0, 0, 0, 0)
        for cy in range(int(round(by)) - 1, int(round(by)) + 2):
            for cx in range(int(round(bx)) - 1, int(round(bx)) + 2):
                t = _shifted(masks, size, cx, cy)  # (K, S, S)
                inter = (t & m).sum((1, 2))
                iou = inter / ((t | m).sum((1, 2)) + 1e-9)
                k = int(iou.argmax())
                if iou[k] > best[0]:
                    best = (float(iou[k]), k, cx, cy)
        fit[i] = best[0]
        out["shape"][i], out["size"][i] = keys[best[1]]
        out["cx"][i], out["cy"][i] = best[2], best[3]
        out["n_blobs"][i] = _blobs(m)
    return Readout(
        shape=out["shape"], colour=out["colour"], size=out["size"], background=out["background"],
        cx=out["cx"], cy=out["cy"], mask=fg, fit_iou=fit, purity=purity, n_blobs=out["n_blobs"],
        palette_dist=dist.reshape(n, -1).mean(1), area=fg.reshape(n, -1).sum(1), colour_share=share,
    )  # fmt: skip


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, S, S) bool x2 -> (N,) IoU (1 where both are empty)."""
    inter, union = (a & b).reshape(len(a), -1).sum(1), (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def replace_factors(f: dict[str, np.ndarray], image_size: int, /, **change) -> dict[str, np.ndarray]:
    """A copy of the generator's factors with some replaced (a value, or one per image) and radii to match.

    The centre moves the least that keeps the shape inside the image, the generator's own rule
    (`asyrp.data.shape_factors`): a small shape near the border, made large in place, would be cut off,
    an image the generator (and so the DDPM's training data) never contains.
    """
    g = {k: np.asarray(v).copy() for k, v in f.items()}
    for k, v in change.items():
        g[k] = np.broadcast_to(v, g[k].shape).astype(g[k].dtype)
    g["radius"], lo = shape_extent(g["size"], image_size)
    for k in ("cx", "cy"):
        g[k] = np.clip(g[k], lo, image_size - lo).astype(g[k].dtype)
    return g


def expected_mask(f: dict[str, np.ndarray], image_size: int, /, **change: int) -> np.ndarray:
    """Foreground masks of the generator's images with some factors replaced (e.g. shape=0): (N, S, S)."""
    g = replace_factors(f, image_size, **{**change, "colour": 0, "background": 0})  # the mask: red on black
    return render_shapes(g, image_size)[..., 0] > 0
