"""Dataset splits of the shapes world: disjoint seeds per split, and a torch Dataset of (scene, caption)."""

from __future__ import annotations

import torch

from .captions import _KIND_CODE, KINDS, Caption, make_caption
from .render import render_scene
from .world import Scene

#: Dataset splits, in the order of their seed residue (see :func:`split_seed`).
SPLITS: tuple[str, ...] = ("train", "val", "test")

_SEED_OFFSET = 1_000_000_007  # keeps dataset seeds away from small hand-picked seeds
_BASE_STRIDE = 1_000_000_000  # indices per base seed


def split_seed(split: str, index: int, base: int = 0) -> int:
    """Scene seed of item ``index`` of ``split``.

    ``seed - OFFSET`` is congruent to 0, 1, 2 (mod 3) for "train", "val",
    "test", so splits never share a seed, for any indices and bases.
    Different ``base`` values give disjoint seeds for indices < 10**9.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    index, base = int(index), int(base)
    if index < 0 or base < 0:
        raise ValueError("index and base must be non-negative")
    return _SEED_OFFSET + 3 * (base * _BASE_STRIDE + index) + SPLITS.index(split)


def collate_scenes(batch):
    """DataLoader ``collate_fn`` for :class:`ShapesDataset` items: returns
    (images [B, 3, H, W], list of scenes, list of captions)."""
    scenes = [s for s, _ in batch]
    captions = [c for _, c in batch]
    return torch.stack([s.image for s in scenes]), scenes, captions


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` (scene, caption) pairs; item ``i`` is rendered on the fly
    from ``split_seed(split, i, base_seed)``.  Use :func:`collate_scenes` as
    the DataLoader's ``collate_fn``."""

    def __init__(
        self,
        split: str = "train",
        length: int = 10_000,
        size: int = 96,
        caption_kind: str = "subset",
        n_objects: tuple[int, int] = (1, 4),
        base_seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if caption_kind not in _KIND_CODE:
            raise ValueError(f"unknown caption kind {caption_kind!r}; expected one of {KINDS}")
        if length < 0:
            raise ValueError("length must be non-negative")
        self.split = split
        self.length = int(length)
        self.size = int(size)
        self.caption_kind = caption_kind
        self.n_objects = (int(n_objects[0]), int(n_objects[1]))
        self.base_seed = int(base_seed)

    def __len__(self) -> int:
        return self.length

    def seed(self, i: int) -> int:
        return split_seed(self.split, i, self.base_seed)

    def __getitem__(self, i) -> tuple[Scene, Caption]:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        scene = render_scene(self.seed(i), size=self.size, n_objects=self.n_objects)
        return scene, make_caption(scene, self.caption_kind)
