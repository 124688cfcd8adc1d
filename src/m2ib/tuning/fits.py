"""The maps of one group of grid points: one tower, one variant, one layer, every beta.

The tower's prefix up to the bottleneck runs once for the group (its output R is shared by the
maps, the second seed's maps and the randomised copy's maps: the copy's blocks below the
bottleneck are the trained ones). The betas are one batched fit: the rows are repeated once per
beta, each copy with its own beta; the copies' losses are independent (a sum of per-pair terms,
Adam per element), so each map is the one a fit with that beta alone gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from ..backends.base import Backend, Modality
from ..maps import finite, minmax
from ..methods.base import autocast, image_scores_to_maps, make_target
from ..methods.m2ib import M2IBSettings, check_fit, fit_bottleneck
from ..metrics import sanity
from .data import TuneData

Maps = list[torch.Tensor]  # per pair: image [H, W] or text [tokens], scaled to [0, 1] as explain does


def randomised_above(backend: Backend, tower: Modality, layer: int, seed: int = 0) -> Backend:
    """A copy of ``backend`` whose ``tower`` has its head and every block above ``layer`` randomised
    (the sanity check's cascade point just above the bottleneck); the user's model is not touched."""
    return sanity.randomised_above(backend, {tower: layer}, seed=seed)


def prefix_hidden(backend: Backend, data: TuneData, tower: Modality, layer: int, batch_size: int) -> torch.Tensor:
    """R, the output of block ``layer`` for every pair [N, T, D] (float32), in chunks of ``batch_size``."""
    batch = data.images if tower == "image" else data.texts
    out = []
    with backend.attribution_mode(), torch.no_grad(), autocast(backend.device, "fp32"):
        for start in range(0, len(batch), batch_size):
            part = batch.select(list(range(start, min(len(batch), start + batch_size))))
            out.append(backend.prefix(tower, part, layer).float())
    return torch.cat(out)


def fit_maps(
    backend: Backend,
    data: TuneData,
    tower: Modality,
    layer: int,
    betas: Sequence[float],
    settings: M2IBSettings,
    hidden: torch.Tensor,
    batch_size: int,
) -> list[Maps]:
    """Per beta, the maps of every pair: one batched fit over (beta, pair), ``batch_size`` fits at a time."""
    batch = data.images if tower == "image" else data.texts
    target = make_target(tower, data.image_emb, data.text_emb, None)
    n = len(data)
    items = [(b, i) for b in range(len(betas)) for i in range(n)]
    relevance = None  # AdaIB's per-pair f (objective="adaib"), fixed: computed once for the rows
    if settings.objective != "published":
        from ..methods.adaib import pair_relevance

        relevance = pair_relevance(backend, data.images, data.texts, settings)
    raw = []
    with backend.attribution_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            rows = [i for _, i in chunk]
            beta = torch.tensor([float(betas[b]) for b, _ in chunk])
            f = None if relevance is None else relevance[rows]
            kl, _ = fit_bottleneck(
                backend, tower, batch.select(rows), layer, target.select(rows), beta, settings, f, hidden=hidden[rows]
            )
            check_fit(kl, tower, settings)
            raw.append(kl.detach().float())
    maps = scaled_maps(backend, data, tower, torch.cat(raw), [i for _, i in items])
    return [maps[b * n : (b + 1) * n] for b in range(len(betas))]


def scaled_maps(backend: Backend, data: TuneData, tower: Modality, raw: torch.Tensor, rows: Sequence[int]) -> Maps:
    """Raw KL scores [M, T] of pairs ``rows`` as explain's maps: image maps at the input size and
    text maps over the real tokens, each scaled to [0, 1] (min-max)."""
    if tower == "image":
        _, maps = image_scores_to_maps(raw, backend)
        return list(minmax(maps).cpu())
    lengths = data.texts.lengths.tolist()
    return [minmax(finite(raw[k, : lengths[i]].cpu())[None])[0] for k, i in enumerate(rows)]


def point_settings(values: dict[str, Any], seed: int) -> M2IBSettings:
    """M2IB's settings of a grid point: its own values over M2IB's defaults (never the model's
    recommended ones: the grid names every value it varies)."""
    s = M2IBSettings(seed=seed, **values)
    s.validate()
    return s


def with_seed(s: M2IBSettings, seed: int) -> M2IBSettings:
    return dataclasses.replace(s, seed=seed)
