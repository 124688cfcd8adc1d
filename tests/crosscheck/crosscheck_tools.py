"""Shared pieces of the cross-check suite: tiny CLIP cases, target wrappers, comparisons."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import m2ib
from m2ib.inputs import load_image
from m2ib.models import RandomCLIPSpec, random_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))  # the family builders

TEXTS = ["a red circle and a blue star", "a green square"]
# 48 px input, 12 px patches: a 4 x 4 grid; three blocks per tower.
TWO_HEADS = RandomCLIPSpec(
    image_size=48,
    patch_size=12,
    vision_width=32,
    vision_layers=3,
    vision_heads=2,
    text_width=32,
    text_layers=3,
    text_heads=2,
    embed_dim=16,
)
# Grad-ECLIP's released code recomputes attention as one full-width head; with one head that is the model.
ONE_HEAD = RandomCLIPSpec(
    image_size=48,
    patch_size=12,
    vision_width=32,
    vision_layers=3,
    vision_heads=1,
    text_width=32,
    text_layers=3,
    text_heads=1,
    embed_dim=16,
)


@dataclass
class Case:
    """One tiny CLIP with N image-text pairs, as both m2ib and the references see them."""

    model: torch.nn.Module  # transformers CLIPModel
    backend: object
    pictures: list[torch.Tensor]  # unnormalised [3, H, W] in [0, 1], what m2ib.explain takes
    pixels: torch.Tensor  # [N, 3, H, W] preprocessed, what the model takes
    texts: list[str]
    tokens: object  # m2ib TextBatch
    image_unit: torch.Tensor  # [N, E] unit image embeddings
    text_unit: torch.Tensor  # [N, E] unit text embeddings

    def explain(self, method: str, **settings):
        return m2ib.explain(self.backend, self.pictures, self.texts, method=method, **settings)


def make_case(spec: RandomCLIPSpec, seed: int = 1, texts: list[str] | None = None) -> Case:
    model, tokenizer = random_clip(spec, seed=seed)
    backend = m2ib.load(model, tokenizer=tokenizer)
    texts = list(texts or TEXTS)
    g = torch.Generator().manual_seed(0)
    pictures = [torch.rand(3, spec.image_size, spec.image_size, generator=g) for _ in texts]
    pixels = backend.preprocess_images([load_image(p)[0] for p in pictures]).pixel_values
    tokens = backend.tokenize(texts)
    with torch.no_grad():
        image_unit = F.normalize(
            backend.embed("image", backend.preprocess_images([load_image(p)[0] for p in pictures])).float(), dim=-1
        )
        text_unit = F.normalize(backend.embed("text", tokens).float(), dim=-1)
    return Case(model, backend, pictures, pixels, texts, tokens, image_unit, text_unit)


def features(out):
    """``get_*_features`` returns a tensor or (transformers 5) an output with ``pooler_output``."""
    return getattr(out, "pooler_output", out)


class ImageScore(torch.nn.Module):
    """pixels [N, 3, H, W] -> the target [N]: cosine of the image embedding with text i's unit embedding.

    ``encode`` maps pixels to image embeddings (the family's own function)."""

    def __init__(self, model: torch.nn.Module, encode, text_unit: torch.Tensor):
        super().__init__()
        self.model, self.encode, self.text_unit = model, encode, text_unit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.encode(pixels).float(), self.text_unit[: len(pixels)], dim=-1, eps=1e-6)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def max_abs(got, want) -> float:
    """max |got - want| (maps already on a common [0, 1] scale)."""
    return float((torch.as_tensor(got).double() - torch.as_tensor(want).double()).abs().max())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        torch.corrcoef(torch.stack([torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()]))[
            0, 1
        ]
    )
