"""CLIP through open_clip, with a differentiable preprocessing of P_t for the directional loss.

``load_clip(name, pretrained)``: ``name`` is an open_clip model name (``ViT-B-16``, ``ViT-B-32``, ...);
``pretrained`` an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...) or a local checkpoint path.
Built-ins (``asyrp.models.offline.CLIP``): ``offline:tiny`` builds a tiny random CLIP (tests and the
plumbing-only offline profile): it exercises every code path but its scores mean nothing.
``offline:toy-clip`` is the toy world's trained CLIP (32-px shapes and their captions, shipped in
``asyrp/toy/assets``; see ``asyrp.toy``).

Preprocessing follows the official code (DiffusionCLIP's CLIPLoss) on tensors, so gradients flow to
the image: [-1, 1] -> [0, 1], bicubic resize of the short side to the model's input size, center crop,
CLIP mean/std normalisation. open_clip is imported inside the functions that build models: it takes seconds
to import, and a ``ClipModel`` wrapper needs only torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import seeded
from . import offline
from .errors import ModelLoadError, host_reachable

Tensor = torch.Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def imagenet_templates(variant: str = "imagenet") -> list[str]:
    """The OpenAI ImageNet prompt templates: open_clip's 80 ("imagenet"), or the official Asyrp code's 79
    ("official": utils/text_templates.py, the same list in the same order without "a photo of many {}.")."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if variant == "official":
        return [t for t in templates if t != "a photo of many {}."]
    if variant != "imagenet":
        raise ValueError(f"unknown template list {variant!r}; choose imagenet (80) or official (79)")
    return templates


class ClipModel(nn.Module):
    """A frozen CLIP with differentiable image preprocessing. Embeddings are L2-normalised."""

    def __init__(self, model: nn.Module, tokenizer, name: str, pretrained: str | None, image_size: int, mean, std):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.pretrained, self.image_size = name, pretrained, int(image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def is_pretrained(self) -> bool:
        return self.pretrained is not None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) CLIP input; differentiable."""
        x = (x.float() + 1.0) / 2.0
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top : top + s, left : left + s]
        return (x - self.mean) / self.std

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit embeddings, E_I."""
        return F.normalize(self.model.encode_image(self.preprocess(x)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """list of N prompts -> (N, D) unit embeddings, E_T."""
        if any(not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def text_embedding(self, prompt: str, templates: list[str] | None = None) -> Tensor:
        """(D,) embedding of a prompt; with templates, the mean of the unit embeddings of every template."""
        if not templates:
            return self.encode_text([prompt])[0]
        return self.encode_text([t.format(prompt) for t in templates]).mean(dim=0)

    @torch.no_grad()
    def text_direction(self, source: str, target: str, templates: list[str] | None = None) -> Tensor:
        """(D,) unit Delta T = E_T(target) - E_T(source) (Eq. 4)."""
        return F.normalize(self.text_embedding(target, templates) - self.text_embedding(source, templates), dim=0)

    @torch.no_grad()
    def prompt_similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two prompts' text embeddings (Table 2's 'CLIP similarity')."""
        e = self.encode_text([a, b])
        return float(e[0] @ e[1])


def tiny_clip(device="cpu") -> ClipModel:
    """Built-in ``offline:tiny``: a seeded random open_clip CLIP for 32-px images (embed_dim 64)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with seeded(0):
        model = open_clip.CLIP(
            embed_dim=64,
            vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
        )
    tok = open_clip.SimpleTokenizer(context_length=32)
    return ClipModel(model, tok, "offline:tiny", None, 32, OPENAI_MEAN, OPENAI_STD).to(device)


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", device="cpu") -> ClipModel:
    """Load a frozen CLIP by open_clip (name, pretrained tag or local checkpoint path), or a built-in ``offline:*``."""
    if name.startswith("offline:"):
        return offline.builtin(offline.CLIP, name, "CLIP")(device)
    import open_clip

    if name not in open_clip.list_models():
        raise ModelLoadError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if pretrained and not Path(pretrained).expanduser().exists():
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        if pretrained not in tags:
            raise ModelLoadError(f"{pretrained!r} is neither a file nor a pretrained tag of {name}; tags: {tags}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        online = host_reachable("huggingface.co")
        raise ModelLoadError(
            f"could not load CLIP {name} with pretrained={pretrained!r}"
            + ("" if online else " (huggingface.co is unreachable and the weights are not cached)")
            + f". Download the checkpoint on a machine with internet (open_clip caches it under HF_HOME), "
            f"or pass a local .pt/.safetensors path as `pretrained`. Cause: {err}"
        ) from None
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_STD
    return ClipModel(model, open_clip.get_tokenizer(name), name, pretrained, size, mean, std).to(device)
