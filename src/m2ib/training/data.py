"""Training data: batch ``k`` is a pure function of ``(config.seed, k)``, so resumed runs see the same data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..datasets.shapes import COLOURS, SHAPES, Caption, Scene, caption_matches, make_caption, render_scene, split_seed
from ..tokenizer import build_word_tokenizer
from .config import TrainConfig

#: Single-token words of the model's tokenizer (anything else still tokenizes, letter by letter).
WORDS: tuple[str, ...] = (*COLOURS, *SHAPES, "a", "an", "and", "the", "of", "photo", "with")
#: Images are [0, 1] floats normalised to [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def label_matrix(scenes: Sequence[Scene], captions: Sequence[Caption]) -> torch.Tensor:
    """[len(scenes), len(captions)] float: 1 where every object caption j names is in scene i."""
    return torch.tensor([[1.0 if caption_matches(c, s) else 0.0 for c in captions] for s in scenes])


class TrainBatches(torch.utils.data.Dataset):
    """Map-style dataset over steps: item ``k`` is the whole batch of training step ``k``.

    A batch is a dict: ``pixel_values`` [B, 3, S, S] (normalised like the saved
    ``preprocessor_config.json`` does), ``input_ids`` / ``attention_mask`` [B, T] (padded to
    the longest caption, truncated at ``context_length``), ``labels`` [B, B] (image x caption,
    see :func:`label_matrix`) and ``step``.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self._tokenizer = None  # built lazily in each process that uses it (DataLoader workers)

    def __len__(self) -> int:
        return self.config.steps

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_word_tokenizer(WORDS)
        return self._tokenizer

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def pairs(self, step: int) -> list[tuple[Scene, Caption]]:
        """The (scene, caption) pairs of training step ``step``."""
        c = self.config
        out = []
        for j in range(c.batch_size):
            scene = render_scene(
                split_seed("train", step * c.batch_size + j, base=c.seed), size=c.image_size, n_objects=c.n_objects
            )
            out.append((scene, make_caption(scene, c.caption_kind)))
        return out

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} out of range for {len(self)} steps")
        pairs = self.pairs(step)
        scenes = [s for s, _ in pairs]
        captions = [c for _, c in pairs]
        images = torch.stack([s.image for s in scenes])
        mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        enc = self.tokenizer(
            [c.text for c in captions],
            padding=True,
            truncation=True,
            max_length=self.config.context_length,
            return_tensors="pt",
        )
        return {
            "step": step,
            "pixel_values": (images - mean) / std,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": label_matrix(scenes, captions),
        }
