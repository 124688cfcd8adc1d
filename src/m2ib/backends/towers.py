"""Towers: the one split forward every family runs (transformers CLIP, SigLIP, OpenCLIP, OpenAI ``clip``).

A model is two towers. A tower embeds its input (the input of block 0), runs blocks, then pools
and projects (its head). :class:`TowersBackend` turns that into the backend interface:
``prefix`` = embed + blocks ``0..layer``; ``suffix`` = blocks ``layer+1..`` + head. The tower
that pools in ``suffix`` also answers which token it pools (``pooled_positions``), which parts
it is made of (``cascade_parts``) and whether its pooled token can be changed (``pooling``), so
each rule is written once, next to the code it describes.

Transformer towers run :mod:`.blocks` (one place for masks, recorded attention and the
last-block shortcut: when a head pools one token, only that token's query, attention output and
MLP are computed in the last block). Parity with each library's own ``encode_*`` /
``get_*_features`` is tested to 1e-5.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .base import AttentionRecord, Backend, Batch, Geometry, ImageBatch, Modality, Part, TextBatch
from .blocks import Block, block_forward, block_forward_at

# Which token a text head reads: the largest id (OpenAI's end-of-text token), the first ``eos_id``,
# the first position, or the last position (padding included).
TEXT_POOLS = ("argmax", "eos", "first", "last")


def present(*objects: Any) -> list[Any]:
    """The objects that exist (a model's optional parts are None)."""
    return [x for x in objects if x is not None]


# The batch a tower takes: an image tower's ImageBatch, a text tower's TextBatch.
B = TypeVar("B", bound=Batch)


class Tower(ABC, Generic[B]):
    """One modality's encoder, split at block outputs."""

    prefix_tokens: int = 0  # image towers: tokens before the spatial ones (CLS)

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @abstractmethod
    def embed(self, batch: B) -> torch.Tensor:
        """The input of block 0, [N, T, D]."""

    @abstractmethod
    def run(
        self, hidden: torch.Tensor, start: int, stop: int, batch: B, copies: int, records: list[AttentionRecord] | None
    ) -> torch.Tensor:
        """Blocks ``start..stop-1`` on ``hidden`` (the input of block ``start``)."""

    @abstractmethod
    def suffix(
        self, hidden: torch.Tensor, layer: int, batch: B, copies: int, records: list[AttentionRecord] | None
    ) -> torch.Tensor:
        """Blocks ``layer+1..`` then the head: [N * copies, embed_dim]."""

    def pooled_positions(self, batch: B, copies: int, device: torch.device) -> torch.Tensor | None:
        """Index [N * copies] of the token the head turns into the embedding, or None when the head
        reads every token (average or attention pooling): this default."""
        return None

    def parts(self) -> tuple[list[Any], list[torch.nn.Module], list[Any]]:
        """(head, blocks bottom-up, embeddings): the modules and parameters the tower is made of."""
        raise InputError(
            f"the sanity check does not know the parts of a {type(self).__name__} (transformers "
            "CLIP/SigLIP towers and OpenAI/OpenCLIP ViT and text towers are supported)"
        )

    def cascade_parts(self) -> list[Part]:
        """The parts from the top down, as the sanity check randomises them: the head, each block
        from the last to the first, then the embeddings."""
        head, blocks, embeddings = self.parts()
        n = len(blocks)
        return (
            [("head", head)] + [(f"block {i}", [blocks[i]]) for i in reversed(range(n))] + [("embeddings", embeddings)]
        )

    def can_pool(self, rule: str) -> bool:
        """Whether a ``pooling(rule)`` context can make the head read the token ``rule`` picks
        (``TEXT_POOLS``; towers that can define ``pooling``)."""
        return False

    def grid(self, layer: int) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def records_attention(self) -> bool:
        return False


class TransformerTower(Tower[B]):
    """A stack of :class:`Block` s between an embedding and a head. Subclasses give ``embed``,
    ``mask``, ``pooled_positions`` and ``head``."""

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)
        # the last-block shortcut (one token's query) cannot rotate a query without its sequence
        self.shortcut = all(b.rotate is None for b in self.blocks)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def records_attention(self) -> bool:
        return True

    def mask(self, batch: B, copies: int, t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """Additive attention mask for ``batch`` repeated ``copies`` times (None: full attention)."""
        return None

    @abstractmethod
    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled token [N, D] (or all tokens [N, T, D] when ``pooled_positions`` is None) -> embedding."""

    def run(self, hidden, start, stop, batch, copies, records):
        blocks = self.blocks[start:stop]
        if not blocks:
            return hidden
        mask = self.mask(batch, copies, hidden.shape[1], hidden.dtype, hidden.device)
        for block in blocks:
            hidden = block_forward(block, hidden, mask, records)
        return hidden

    def suffix(self, hidden, layer, batch, copies, records):
        n, t, _ = hidden.shape
        last = self.num_layers - 1
        positions = self.pooled_positions(batch, copies, hidden.device)
        rows = torch.arange(n, device=hidden.device)
        if positions is None or records is not None or not self.shortcut:  # every block in full
            hidden = self.run(hidden, layer + 1, last + 1, batch, copies, records)
            return self.head(hidden if positions is None else hidden[rows, positions])
        if layer < last:
            hidden = self.run(hidden, layer + 1, last, batch, copies, None)
            mask = self.mask(batch, copies, t, hidden.dtype, hidden.device)
            return self.head(block_forward_at(self.blocks[-1], hidden, positions, mask))
        return self.head(hidden[rows, positions])


class ClassTokenTower(TransformerTower[ImageBatch]):
    """An image tower whose head reads its class token (position 0)."""

    prefix_tokens = 1

    def pooled_positions(self, batch, copies, device):
        return torch.zeros(len(batch) * copies, dtype=torch.long, device=device)


def text_positions(input_ids: torch.Tensor, rule: str, eos_id: int | None) -> torch.Tensor:
    """Per row, the position a ``rule`` text head reads (``TEXT_POOLS``)."""
    n, t = input_ids.shape
    if rule == "argmax":
        return input_ids.argmax(dim=-1)
    if rule == "eos":
        if eos_id is None:
            raise RuntimeError("the 'eos' text pool needs the tokenizer's end-of-text id; none was given")
        return input_ids.eq(eos_id).int().argmax(dim=-1)
    if rule == "first":
        return torch.zeros(n, dtype=torch.long, device=input_ids.device)
    return torch.full((n,), t - 1, dtype=torch.long, device=input_ids.device)


class PooledTextTower(TransformerTower[TextBatch]):
    """A text tower whose head reads one token, picked by ``pool`` (``TEXT_POOLS``)."""

    def __init__(self, blocks: Sequence[Block], pool: str, eos_id: int | None = None, causal: bool = True):
        super().__init__(blocks)
        if pool not in TEXT_POOLS:
            raise InputError(f"text pooling {pool!r} is not supported (argmax, eos, first or last)")
        self.pool, self.eos_id, self.causal = pool, eos_id, causal
        self._forced: str | None = None  # the rule an open pooling() context puts in place of pool

    def pooled_positions(self, batch, copies, device):
        rule = self._forced or self.pool
        return text_positions(batch.input_ids.to(device), rule, self.eos_id).repeat_interleave(copies, 0)

    def can_pool(self, rule: str) -> bool:
        # Only a causal tower: the tokens up to the new pooled one never see those after it, so the
        # embedding is the model's own for the ids up to there.
        return self.causal and rule in TEXT_POOLS

    @contextlib.contextmanager
    def pooling(self, rule: str) -> Iterator[None]:
        if not self.can_pool(rule):
            raise InputError(f"this {'causal' if self.causal else 'bidirectional'} text tower cannot pool by {rule!r}")
        if self._forced is not None:
            raise RuntimeError("the text tower's pooling is already forced")
        self._forced = rule
        try:
            yield
        finally:
            self._forced = None


# --- the backend ----------------------------------------------------------------------------
@dataclass
class TowersBackend(Backend):
    """A backend made of two :class:`Tower` s; family subclasses build them and tokenise."""

    tokenizer: Any = None
    preprocessing: ImagePreprocessing | None = None
    towers: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.towers = self.build_towers()

    @abstractmethod
    def build_towers(self) -> dict[Modality, Tower]: ...

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @property
    def image_preprocessing(self) -> ImagePreprocessing:
        if self.preprocessing is None:  # every family passes one; None here is a bug in the family
            raise RuntimeError(f"{type(self).__name__} was built without its image preprocessing")
        return self.preprocessing

    @property
    def geometry(self) -> Geometry:
        image = self.towers["image"]
        return Geometry(
            image_size=self.image_preprocessing.crop,
            patch_grid=image.grid(image.num_layers - 1),
            image_prefix_tokens=image.prefix_tokens,
            vision_layers=image.num_layers,
            text_layers=self.towers["text"].num_layers,
            context_length=self.context_length,
        )

    def token_grid(self, modality: Modality, layer: int) -> tuple[int, int]:
        return self.towers["image"].grid(layer)

    # --- inputs --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image], sources: Sequence[str] = ()) -> ImageBatch:
        pixels, display = self.image_preprocessing(images)
        return ImageBatch(pixels.to(self.device), display, tuple(sources))

    def display_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.image_preprocessing.mean, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_preprocessing.std, device=pixel_values.device).view(1, 3, 1, 1)
        return (pixel_values.float() * std + mean).clamp(0.0, 1.0)

    # --- the split forward ---------------------------------------------------------------
    def prefix(self, modality: Modality, batch: Batch, layer: int) -> torch.Tensor:
        tower = self.towers[modality]
        hidden = tower.embed(batch)
        return tower.run(hidden, 0, layer + 1, batch, 1, self._recording.get(modality))

    def suffix(self, modality: Modality, hidden: torch.Tensor, layer: int, batch: Batch) -> torch.Tensor:
        copies = hidden.shape[0] // len(batch)
        if copies * len(batch) != hidden.shape[0]:
            raise ValueError(f"hidden has {hidden.shape[0]} rows, not a multiple of the batch's {len(batch)}")
        return self.towers[modality].suffix(hidden, layer, batch, copies, self._recording.get(modality))

    # --- what the tower knows about itself ------------------------------------------------
    def pooled_positions(self, modality: Modality, batch: Batch) -> torch.Tensor | None:
        return self.towers[modality].pooled_positions(batch, 1, self.device)

    def cascade_parts(self, modality: Modality) -> list[Part]:
        return self.towers[modality].cascade_parts()

    def can_pool(self, modality: Modality, rule: str) -> bool:
        return self.towers[modality].can_pool(rule)

    def pooling(self, modality: Modality, rule: str) -> contextlib.AbstractContextManager[None]:
        if not self.can_pool(modality, rule):
            return super().pooling(modality, rule)  # the one-line refusal
        return self.towers[modality].pooling(rule)

    # --- attention -----------------------------------------------------------------------
    @property
    def supports_attention(self) -> bool:
        return all(t.records_attention for t in self.towers.values())

    def can_record_attention(self, modality: Modality) -> bool:
        return self.towers[modality].records_attention


__all__ = [
    "ClassTokenTower",
    "PooledTextTower",
    "TEXT_POOLS",
    "Tower",
    "TowersBackend",
    "TransformerTower",
    "present",
    "text_positions",
]
