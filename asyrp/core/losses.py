"""The training loss of Eq. 7: lambda_CLIP * L_direction + lambda_recon * |P_t^edit - P_t^source|.

Two choices the paper and the official code make differently are parameters:

    loss_form    "one_minus_cos": L_direction = 1 - cos(dI, dT)          (Eq. 4, the paper)
                 "log":           -log((2 - L_direction) / 2)           (official code; default, because
                                                                          Table 3's lambdas were tuned with it)
    clip_source  "x0":  dI = E_I(P_t^edit) - E_I(x0), x0 the real image   (official; default)
                 "p_t": dI = E_I(P_t^edit) - E_I(P_t^source)             (Eq. 7 as written)

Embeddings are unit-normalised before the difference, as in the official code (DiffusionCLIP's CLIPLoss).
An extension beyond the paper: per-image source prompts (``text_directions``), e.g. each image's caption, so
Delta T points from what the image is to the target rather than from a generic prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models.clip import ClipModel, imagenet_templates
from .config import LOSS_FORMS, LossConfig

Tensor = torch.Tensor


def directional_cos(edit_emb: Tensor, source_emb: Tensor, text_direction: Tensor) -> Tensor:
    """cos(dI, dT) per image, dI = E_I(edit) - E_I(source) (Eq. 4, Eq. 17). (B, D), (B, D), (D,) | (B, D) -> (B,)."""
    dt = text_direction if text_direction.ndim == 2 else text_direction[None]
    return F.cosine_similarity(edit_emb - source_emb, dt.to(edit_emb.dtype), dim=-1, eps=1e-8)


def direction_loss(cos: Tensor, form: str = "log") -> Tensor:
    """Per-image L_direction from cos(dI, dT): 1 - cos (Eq. 4) or the official -log((2 - (1 - cos)) / 2)."""
    if form == "one_minus_cos":
        return 1.0 - cos
    if form == "log":
        return -torch.log((1.0 + cos) / 2.0 + 1e-8)
    raise ValueError(f"unknown loss_form {form!r}; choose one of {LOSS_FORMS}")


class AsyrpLoss:
    """Eq. 7 for one prompt pair; text embeddings are computed once, at construction."""

    def __init__(self, clip: ClipModel, source: str, target: str, config: LossConfig | None = None):
        self.config = config or LossConfig()
        self.config.validate()
        if not source.strip() or not target.strip():
            raise ValueError("source and target prompts must be non-empty")
        self.clip, self.source, self.target = clip, source, target
        templates = None if self.config.templates == "none" else imagenet_templates(self.config.templates)
        self.text_direction = clip.text_direction(source, target, templates)
        self.prompt_similarity = clip.prompt_similarity(source, target)
        self.lambda_recon = self.config.lambda_recon_for(self.prompt_similarity)
        self._templates = templates
        self._per_source: dict[str, Tensor] = {}

    def text_directions(self, sources: Sequence[str]) -> Tensor:
        """(B, D) Delta T from each image's own source prompt to the target (e.g. "a green shape" -> "a red
        shape" for a green image); an image whose source equals the target gets a zero direction (no pull)."""
        for s in set(sources) - set(self._per_source):
            if not s.strip():
                raise ValueError("per-image source prompts must be non-empty")
            self._per_source[s] = self.clip.text_direction(s, self.target, self._templates)
        return torch.stack([self._per_source[s] for s in sources])

    @torch.no_grad()
    def source_embedding(self, images: Tensor) -> Tensor:
        """E_I of the CLIP source images (x0 or P_t^source), (B, 3, H, W) -> (B, D); no graph needed."""
        return self.clip.encode_image(images)

    def __call__(
        self, pred_edit: Tensor, pred_source: Tensor, source_emb: Tensor, text_direction: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Mean over the batch of Eq. 7. pred_edit (with grad), pred_source: (B, 3, H, W); source_emb (B, D);
        text_direction: None (the prompt pair's) or (B, D) from ``text_directions``."""
        td = self.text_direction if text_direction is None else text_direction
        cos = directional_cos(self.clip.encode_image(pred_edit), source_emb, td)
        l_clip = direction_loss(cos, self.config.loss_form)  # (B,)
        l_recon = (pred_edit.float() - pred_source.float()).abs().flatten(1).mean(dim=1)  # (B,)
        per_image = self.config.lambda_clip * l_clip + self.lambda_recon * l_recon
        stats = {
            "loss": per_image.mean().item(),
            "clip": l_clip.mean().item(),
            "recon": l_recon.mean().item(),
            "cos": cos.mean().item(),
        }
        return per_image.mean(), stats
