"""The per-pair work of an evaluation run: a pure function of its arguments.

:func:`evaluate_rows` explains a batch of rows with each method (the batched path) and
measures every requested per-pair metric of the registry (:mod:`m2ib.metrics.base`). It reads
nothing but its arguments and writes nothing, so the same call can run anywhere (the local
scheduler, a Ray actor in :mod:`m2ib.evaluation.distributed`) and give the same numbers: every
random choice of a metric is seeded from the run's seed and the row's id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..backends.base import Backend
from ..datasets.tables import Row
from ..errors import InputError
from ..inputs import load_image
from ..metrics.base import PHRASES, Chosen, Measured, MethodRun, Metric, PairBatch, in_registry_order, number
from ..metrics.common import pair_seed
from ..metrics.localisation import ground_truth_mask
from .phrases import first_order_phrase_maps, interaction_records, is_interaction, measure_phrases, pair_similarities


def evaluate_pair(
    backend: Backend,
    row: Row,
    methods: Sequence[str],
    metrics: Chosen,
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
) -> list[dict[str, Any]]:
    """Explain ``row`` with each method and measure the metrics: one record per method.

    :func:`evaluate_rows` for one row; raises :class:`~m2ib.errors.InputError` when the row's
    image cannot be read.
    """
    records, bad = evaluate_rows(backend, [row], methods, metrics, settings, seed)
    if bad:
        raise InputError(bad[0]["reason"])
    return records


def evaluate_rows(
    backend: Backend,
    rows: Sequence[Row],
    methods: Sequence[str],
    metrics: Chosen,
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Explain ``rows`` with each method (one batched call per method) and measure the metrics.

    Pure: depends only on its arguments. The randomness of every metric is seeded from
    ``seed`` and the row's id, and each method gets ``seed`` as its own seed unless
    ``settings`` sets one; ``metrics``: names, or each with its options (:data:`~m2ib.metrics.base.Chosen`);
    batched explanations equal single ones, so the numbers do not depend
    on which rows share a batch (up to float rounding). This is the one per-pair code path of
    the local and the Ray runs.

    Returns ``(records, bad)``: records ``{"kind": "pair", "row", "method", "image", "text",
    "similarity", "metrics": {key: value}, "curves": {key: [values]}, "seconds": {"explain",
    "metrics"}}`` in (row, method) order, a value None where it is undefined (e.g. a text with
    no word; keys: see :mod:`m2ib.metrics`; seconds are the batch's divided by its rows); and
    ``{"row", "reason"}`` for each row whose image could not be read.
    """
    measured = [m for m in in_registry_order(metrics) if m.per_pair]
    batch, bad = read_batch(backend, rows, seed, measured)
    if batch is None:
        return [], bad
    per_row: dict[tuple[str, str], dict[str, Any]] = {}
    for method in methods:
        for record in evaluate_method(batch, method, settings, measured):
            per_row[(record["row"], method)] = record
    return [per_row[(row.id, m)] for row in batch.rows for m in methods], bad


def readable_rows(rows: Sequence[Row]) -> tuple[list[Row], list, list[dict[str, str]]]:
    """(rows whose image can be read, their pictures, the bad rows ``{"row", "reason"}``): an unreadable
    image is counted, never raised."""
    good, pictures, bad = [], [], []
    for row in rows:
        try:
            pictures.append(load_image(row.image)[0])
            good.append(row)
        except InputError as exc:
            bad.append({"row": row.id, "reason": str(exc)})
    return good, pictures, bad


def read_batch(
    backend: Backend, rows: Sequence[Row], seed: int, measured: Sequence[Metric]
) -> tuple[PairBatch | None, list[dict[str, str]]]:
    """The rows whose image can be read, as model inputs with what the metrics need; and the bad rows."""
    good, pictures, bad = readable_rows(rows)
    if not good:
        return None, bad
    batch = PairBatch(
        backend,
        good,
        backend.preprocess_images(pictures, [row.source for row in good]),
        backend.tokenize([row.text for row in good]),
        int(seed),
        [pair_seed(seed, row.id) for row in good],
    )
    if any("masks" in m.needs for m in measured):
        batch.masks = [ground_truth_mask(backend, row, picture.size) for row, picture in zip(good, pictures)]
    return batch, bad


def evaluate_method(
    batch: PairBatch, method: str, settings: dict[str, dict[str, Any]] | None, measured: Sequence[Metric]
) -> list[dict[str, Any]]:
    """One method's records for the batch: explain once, then each metric on each side it explains
    (and, for a phrase-side metric, each row's phrases explained alone: :mod:`.phrases`)."""
    from ..methods import REGISTRY as METHODS

    if is_interaction(method):
        return interaction_records(batch, method, settings, measured)
    algorithm = METHODS.get(method)()
    sides = [m for m in ("image", "text") if m in algorithm.modalities]
    phrases = "image" in sides and any(PHRASES in m.sides for m in measured)
    if phrases and all(set(m.sides) == {PHRASES} for m in measured):
        sides = []  # phrase-side metrics only: the whole caption's maps would not be read
    own = {"seed": int(batch.seed), **((settings or {}).get(method) or {})}
    chosen = algorithm.make_settings(batch.backend, **own)
    start = time.perf_counter()
    exps = algorithm.explain(batch.backend, batch.images, batch.texts, chosen, sides) if sides else []
    phrase_maps = first_order_phrase_maps(batch, algorithm, chosen) if phrases else None
    scores = [e.similarity for e in exps] if exps else pair_similarities(batch)
    explained = time.perf_counter()
    run = MethodRun(method, own, exps)
    total = Measured.empty(len(batch))
    for side in sides:
        maps: Any = torch.stack([e.map_of("image") for e in exps]) if side == "image" else [e.text_map for e in exps]
        for metric in measured:
            if side in metric.sides:
                part = metric.measure(batch, run, side, maps)
                for i in range(len(batch)):
                    total.values[i].update(part.values[i])
                    total.curves[i].update(part.curves[i])
    if phrase_maps is not None:
        measure_phrases(batch, run, phrase_maps, measured, total)
    n = len(batch)
    seconds = {"explain": round((explained - start) / n, 4), "metrics": round((time.perf_counter() - explained) / n, 4)}
    return [
        {
            "kind": "pair",
            "row": row.id,
            "method": method,
            "image": row.source,
            "text": row.text,
            "similarity": number(scores[i]),
            "metrics": total.values[i],
            "curves": total.curves[i],
            "seconds": seconds,
        }
        for i, row in enumerate(batch.rows)
    ]
