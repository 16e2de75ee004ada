"""The toy CLIP: a small open_clip ``CLIP`` and a word-level tokenizer over the captions' vocabulary.

The vocabulary is the words of the generator's captions and prompts (plus a few function words), so the
token embedding table is tiny; an unknown word maps to ``<unk>``. ``<eot>`` has the largest id because
open_clip pools the text tower at ``argmax(token id)``.
"""

from __future__ import annotations

import re

import torch

from ..seeding import seeded
from .generator import BACKGROUNDS, COLOURS, SHAPES, SIZES

CONTEXT_LENGTH = 16
FUNCTION_WORDS = ("a", "an", "the", "of", "on", "in", "with", "shape", "background", "photo", "picture", "image",
                  "big", "tiny", "grey", "object")  # fmt: skip
SPECIALS_HEAD = ("<pad>", "<sot>", "<unk>")
VOCAB = SPECIALS_HEAD + tuple(sorted(set(FUNCTION_WORDS + SHAPES + tuple(COLOURS) + tuple(SIZES)
                                         + tuple(BACKGROUNDS)))) + ("<eot>",)  # fmt: skip
SYNONYMS = {"big": "large", "tiny": "small", "grey": "gray"}

TOY_CLIP_CONFIG = dict(
    embed_dim=128,
    vision=dict(layers=4, width=128, head_width=32, patch_size=4, image_size=32),
    text=dict(context_length=CONTEXT_LENGTH, vocab_size=len(VOCAB), width=128, heads=4, layers=3),
)
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class WordTokenizer:
    """list[str] -> (N, CONTEXT_LENGTH) long tensor: <sot> words <eot> <pad>..."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        self.index = {w: i for i, w in enumerate(VOCAB)}

    def encode(self, text: str) -> list[int]:
        words = [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
        ids = [self.index.get(w, self.index["<unk>"]) for w in words][: self.context_length - 2]
        return [self.index["<sot>"], *ids, self.index["<eot>"]]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def build_toy_clip(seed: int = 0):
    """A seeded random toy CLIP (TOY_CLIP_CONFIG); open_clip imported here, as it takes seconds to import."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    c = TOY_CLIP_CONFIG
    with seeded(seed):  # thread-safe (asyrp.seeding)
        return open_clip.CLIP(embed_dim=c["embed_dim"], vision_cfg=CLIPVisionCfg(**c["vision"]),
                              text_cfg=CLIPTextCfg(**c["text"]))  # fmt: skip
