"""TrainConfig: everything that determines a training run, checked on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..datasets.shapes import KINDS
from ..errors import InputError

# Fields that do not change what is computed: a checkpoint made with other values resumes.
RESUME_FREE = ("workers", "checkpoint_every")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (``device`` aside)."""

    image_size: int = 96  # input resolution in pixels; scenes are rendered at this size
    patch_size: int = 6  # ViT patch side in pixels (96 / 6: a 16x16 patch grid)
    vision_width: int = 192  # hidden size of the image tower
    vision_layers: int = 6  # transformer blocks in the image tower
    vision_heads: int = 6  # attention heads in the image tower
    text_width: int = 128  # hidden size of the text tower
    text_layers: int = 4  # transformer blocks in the text tower
    text_heads: int = 4  # attention heads in the text tower
    embed_dim: int = 128  # size of the joint image-text embedding
    context_length: int = 32  # most text tokens, start/end included (captions are short)
    steps: int = 2000  # optimiser steps
    batch_size: int = 256  # image-caption pairs per step (the loss compares all B x B pairs)
    lr: float = 1e-3  # peak learning rate of AdamW
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr, then cosine decay to 0
    weight_decay: float = 0.1  # AdamW decoupled weight decay, on weight matrices only
    beta2: float = 0.98  # AdamW's second-moment decay (beta1 is 0.9)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    logit_scale_init: float = math.log(10.0)  # initial log temperature (CLIPModel.logit_scale)
    logit_bias_init: float = -10.0  # initial logit bias of the sigmoid loss
    caption_kind: str = "subset"  # make_caption kind of the training captions
    n_objects: tuple[int, int] = (1, 4)  # inclusive range of objects per training scene
    seed: int = 0  # model initialisation and the data (base seed of split_seed)
    workers: int = 2  # DataLoader worker processes generating batches (0: in the main process)
    checkpoint_every: int = 100  # write out_dir/checkpoint.pt every this many steps
    amp: bool | None = None  # bf16 autocast; None: on for CUDA, off elsewhere

    def __post_init__(self) -> None:
        ints = (
            "image_size",
            "patch_size",
            "vision_width",
            "vision_layers",
            "vision_heads",
            "text_width",
            "text_layers",
            "text_heads",
            "embed_dim",
            "context_length",
            "steps",
            "batch_size",
            "checkpoint_every",
        )
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"{name}={value!r} must be a positive integer")
        if self.image_size < 64:
            raise InputError(f"image_size={self.image_size} must be at least 64 (the shapes world's smallest)")
        if self.image_size % self.patch_size:
            raise InputError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise InputError(f"{width}={getattr(self, width)} must be a multiple of {heads}={getattr(self, heads)}")
        if self.context_length < 4:
            raise InputError(f"context_length={self.context_length} is too short for a caption")
        if self.caption_kind not in KINDS:
            raise InputError(f"caption_kind={self.caption_kind!r}: use one of {', '.join(KINDS)}")
        lo, hi = self.n_objects
        if not 1 <= lo <= hi:
            raise InputError(f"n_objects={self.n_objects!r} must satisfy 1 <= low <= high")
        object.__setattr__(self, "n_objects", (int(lo), int(hi)))  # lists (from JSON) -> a tuple
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.beta2 < 1:
            raise InputError("lr must be > 0, weight_decay and grad_clip >= 0, beta2 in [0, 1)")
        if self.warmup_steps < 0 or self.workers < 0 or self.seed < 0:
            raise InputError("warmup_steps, workers and seed must be non-negative")


#: A tiny configuration: a complete run in seconds on a CPU (tests, smoke runs).
QUICK = TrainConfig(
    image_size=64,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=2,
    text_heads=2,
    embed_dim=32,
    steps=30,
    batch_size=32,
    warmup_steps=5,
    workers=0,
    checkpoint_every=10,
)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data (``n_objects`` a list)."""
    d = asdict(config)
    d["n_objects"] = list(d["n_objects"])
    return d


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``"key: saved -> current"`` for every field that changes what a resumed run computes."""
    current = config_dict(config)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_FREE:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, tuple):
            a = list(a)
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs
