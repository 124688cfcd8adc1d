"""Phrase maps in an evaluation run: interaction methods next to first-order ones (issue 20).

``--methods`` may name interaction methods (:mod:`m2ib.interactions`: ``exclip``,
``phrase-alone``, ...) as well as first-order ones. Metrics that measure the
:data:`~m2ib.metrics.base.PHRASES` side (``grounding``) read, for each row with object phrases,
one image map per phrase: an interaction method's maps of the phrases' character spans, or a
first-order method's image map of each phrase explained alone against the image (the baseline
"map of the phrase alone"; raw maps, not min-max normalised, as ``phrase-alone`` reads them).
Interaction methods have that side only, so a run of one needs such a metric.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..backends.base import Backend
from ..errors import InputError
from ..metrics.base import PHRASES, Measured, MethodRun, Metric, PairBatch, number


def interaction_registry() -> dict[str, Any]:
    from ..interactions import REGISTRY

    return dict(REGISTRY)


def method_registry() -> dict[str, Any]:
    """First-order and interaction methods by name (what ``--methods`` and the setting flags read)."""
    from ..methods import REGISTRY

    return {**REGISTRY, **interaction_registry()}


def is_interaction(name: str) -> bool:
    return name in interaction_registry()


def evaluated_methods(spec: str, option: str = "--methods") -> list[str]:
    """A comma list of first-order and interaction method names, or ``all`` (the first-order ones)."""
    from ..methods import REGISTRY as METHODS

    names = [m.strip() for m in spec.split(",") if m.strip()]
    interactions = interaction_registry()
    if spec.strip() == "all" or not any(n in interactions for n in names):
        return METHODS.select(spec, option)
    first_order = [n for n in names if n not in interactions]
    if first_order:
        METHODS.select(",".join(first_order), option)  # unknown names: one line
    return list(dict.fromkeys(names))


def make_settings(backend: Backend | None, method: str, values: dict[str, Any]) -> Any:
    """The method's settings object from ``values`` (bad names and ranges: one line)."""
    registry = method_registry()
    if method in interaction_registry():
        return registry[method]().make_settings(**values)
    return registry[method]().make_settings(backend, **values)


def resolved_settings(backend: Backend, method: str, values: dict[str, Any]) -> dict[str, Any]:
    """Every setting ``method`` runs with, as a dict (first-order: layers resolved for the model)."""
    chosen = make_settings(backend, method, values)
    if is_interaction(method):
        return chosen.as_dict()
    from ..methods import REGISTRY as METHODS

    return METHODS.get(method)().resolved(backend, chosen).as_dict()


def check_phrase_metrics(methods: Sequence[str], measured: Sequence[Metric]) -> None:
    """Refuse interaction methods in a run without a metric of their one side (phrase maps)."""
    interactions = [m for m in methods if is_interaction(m)]
    if interactions and not any(PHRASES in m.sides for m in measured):
        raise InputError(
            f"{', '.join(interactions)}: an interaction method is measured by --metrics grounding "
            "only (with --data shapes-two:SPLIT:N); add it or drop the method"
        )


def pair_similarities(batch: PairBatch) -> list[float]:
    """Each pair's cosine similarity (for records of methods that explain phrases only)."""
    with torch.no_grad():
        a = torch.nn.functional.normalize(batch.backend.embed("image", batch.images).float(), dim=-1)
        b = torch.nn.functional.normalize(batch.backend.embed("text", batch.texts).float(), dim=-1)
    return (a * b).sum(-1).tolist()


def first_order_phrase_maps(batch: PairBatch, algorithm: Any, chosen: Any) -> list[torch.Tensor | None]:
    """Per row, [P, H, W] raw image maps of its P phrases each explained alone (None: no phrases);
    all the batch's phrases in one batched call."""
    owners = [i for i, row in enumerate(batch.rows) for _ in row.phrases]
    if not owners:
        return [None] * len(batch)
    texts = [row.text[a:b] for row in batch.rows for a, b in row.phrases]
    exps = algorithm.explain(
        batch.backend, batch.images.select(owners), batch.backend.tokenize(texts), chosen, ("image",)
    )
    maps = [e.image_map_raw if e.image_map_raw is not None else e.image_map for e in exps]
    out: list[torch.Tensor | None] = [None] * len(batch)
    for i in set(owners):
        out[i] = torch.stack([m.float().cpu() for m, owner in zip(maps, owners) if owner == i])
    return out


def measure_phrases(
    batch: PairBatch, run: MethodRun, maps: list[torch.Tensor | None], measured: Sequence[Metric], total: Measured
) -> None:
    """Add the phrase-side metrics' values to ``total``."""
    for metric in measured:
        if PHRASES in metric.sides:
            part = metric.measure(batch, run, PHRASES, maps)
            for i in range(len(batch)):
                total.values[i].update(part.values[i])
                total.curves[i].update(part.curves[i])


def interaction_records(
    batch: PairBatch, method: str, settings: dict[str, dict[str, Any]] | None, measured: Sequence[Metric]
) -> list[dict[str, Any]]:
    """An interaction method's records for the batch: each row's phrase maps, one pair at a time
    (the text tokenised alone, as ``m2ib explain`` does), then the phrase-side metrics."""
    from ..interactions import REGISTRY as INTERACTIONS
    from ..interactions.base import similarity

    algorithm = INTERACTIONS.get(method)()
    own = {"seed": int(batch.seed), **((settings or {}).get(method) or {})}
    chosen = algorithm.make_settings(**own)
    backend = batch.backend
    start = time.perf_counter()
    maps: list[torch.Tensor | None] = []
    scores = []
    for i, row in enumerate(batch.rows):
        image, text = batch.images.select([i]), backend.tokenize([row.text])
        scores.append(similarity(backend, image, text))
        maps.append(
            algorithm.phrase_maps(backend, image, text, list(row.phrases), chosen).float().cpu()
            if row.phrases
            else None
        )
    explained = time.perf_counter()
    total = Measured.empty(len(batch))
    measure_phrases(batch, MethodRun(method, own, []), maps, measured, total)
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
