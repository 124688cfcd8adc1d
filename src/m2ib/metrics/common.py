"""Shared pieces of the metrics: the target score, map checks, ranks with seeded tie-breaking."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError

#: Most inputs per forward pass when a metric scores perturbed copies.
CHUNK = 64


def pair_seed(seed: int, key: str) -> int:
    """A seed for one pair from the run's seed and the pair's stable key (order-independent)."""
    return zlib.crc32(f"{int(seed)}:{key}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def scoring(backend: Backend) -> Iterator[None]:
    """Eval mode, frozen weights and no autograd while perturbed inputs are scored."""
    with backend.attribution_mode(), torch.no_grad():
        yield


def unit_embeddings(
    backend: Backend, modality: Modality, batch: ImageBatch | TextBatch, chunk: int = CHUNK
) -> torch.Tensor:
    """Unit-norm float embeddings [N, E] of ``batch`` (call inside :func:`scoring`)."""
    out = []
    for start in range(0, len(batch), chunk):
        part = batch.select(list(range(start, min(len(batch), start + chunk))))
        out.append(F.normalize(backend.embed(modality, part).float(), dim=-1))
    return torch.cat(out) if out else torch.zeros(0)


def targets(backend: Backend, modality: Modality, images: ImageBatch, texts: TextBatch) -> torch.Tensor:
    """The fixed embedding each pair's ``modality`` side is scored against: the *other* side's
    unit embedding [N, E] (text embedding for the image side, image embedding for the text side)."""
    other: Modality = "text" if modality == "image" else "image"
    return unit_embeddings(backend, other, texts if other == "text" else images)


def cosine(embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity [M] of unit embeddings [M, E] with targets [M, E]."""
    return (embeddings * target.to(embeddings.device)).sum(-1)


def image_maps(maps: torch.Tensor | Sequence[torch.Tensor], images: ImageBatch) -> torch.Tensor:
    """Image maps as one float tensor [N, H, W] at the model's input size, on the images' device."""
    if isinstance(maps, torch.Tensor):
        stacked = maps[None] if maps.ndim == 2 else maps
    else:
        stacked = torch.stack([torch.as_tensor(m) for m in maps])
    stacked = stacked.detach().float()
    n, _, h, w = images.pixel_values.shape
    if stacked.ndim != 3 or stacked.shape[0] != n or tuple(stacked.shape[1:]) != (h, w):
        raise InputError(
            f"image maps of shape {tuple(stacked.shape)} do not fit {n} images of {h}x{w} "
            "(give one [H, W] map per image, at the model's input size)"
        )
    return torch.nan_to_num(stacked, nan=0.0).to(images.pixel_values.device)


def text_maps(maps: torch.Tensor | Sequence[torch.Tensor], texts: TextBatch) -> list[torch.Tensor]:
    """Text maps as a list of float [T_i] tensors, one score per real token (start/end included)."""
    lengths = texts.lengths.tolist()
    if isinstance(maps, torch.Tensor):
        rows = [maps] if maps.ndim == 1 else list(maps)
    else:
        rows = [torch.as_tensor(m) for m in maps]
    if len(rows) != len(texts):
        raise InputError(f"{len(rows)} text maps for {len(texts)} texts")
    out = []
    for row, n in zip(rows, lengths):
        row = torch.nan_to_num(row.detach().float().cpu(), nan=0.0)
        if row.shape[0] < n:
            raise InputError(f"a text map has {row.shape[0]} scores but its text has {n} tokens")
        out.append(row[:n])
    return out


def word_positions(texts: TextBatch, i: int) -> list[int]:
    """Positions of pair ``i``'s real tokens that are not start/end tokens."""
    n = int(texts.lengths[i])
    special = set(texts.special[i]) if texts.special else {0, n - 1}
    return [j for j in range(n) if j not in special]


#: Scores closer than this share of a map's range rank as equal (see :func:`descending_order`).
RANK_RESOLUTION = 2.0**-16


def descending_order(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``scores`` (1-D) from the highest to the lowest; equal scores in a random
    order drawn from ``generator`` (so a constant map removes pixels or words at random).

    Scores are first rounded to :data:`RANK_RESOLUTION` of their range: float rounding (another
    batch size or thread count) splits ties of a map (e.g. the plateaus of an upsampled grid)
    by a unit in the last place, which would otherwise reorder whole tie groups."""
    scores = scores.detach().double().cpu().flatten()
    low, span = scores.min(), scores.max() - scores.min()
    scores = torch.round((scores - low) / span / RANK_RESOLUTION) if span > 0 else torch.zeros_like(scores)
    perm = torch.randperm(scores.numel(), generator=generator)
    order = torch.sort(scores[perm], descending=True, stable=True).indices
    return perm[order]


def top_fraction_mask(scores: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Bool mask (shape of ``scores``) of the ``round(fraction * numel)`` highest scores (random ties)."""
    k = int(round(float(fraction) * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[descending_order(scores, generator)[:k]] = True
    return mask.reshape(scores.shape)


def trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Area under ``y`` [..., K] over ``x`` [K] (trapezoid rule)."""
    dx = x[1:] - x[:-1]
    return ((y[..., 1:] + y[..., :-1]) * 0.5 * dx.to(y)).sum(-1)
