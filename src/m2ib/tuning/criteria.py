"""The criteria of one grid point, from maps computed once (:mod:`.fits`) and read by every criterion.

Label-free (every data set):

* ``sanity`` (lower is better): mean over pairs of |Spearman| between the map and the map of a
  copy of the model whose head and every block ABOVE the bottleneck are randomised.
* ``faithfulness`` (higher): mean over pairs of insertion AUC minus deletion AUC
  (:mod:`m2ib.metrics.deletion`) of the model's own cosine similarity.
* ``agreement`` (higher): mean Spearman between the maps of two seeds (``--seed`` and ``--seed + 1``).
* ``constant`` (lower): the share of maps that are the same everywhere (they rank nothing).

Ground truth, when the rows carry it: ``pointing`` and ``energy`` (image side; masks or boxes),
``text_pointing`` (text side; the relevant word spans of shapes captions). Each has a chance level
(:func:`chance_levels`) that a right point must exceed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..backends.base import Backend, Modality
from ..metrics.deletion import deletion_insertion
from ..metrics.localisation import energy_inside, pointing_hit, text_pointing
from ..metrics.sanity import spearman
from .data import TuneData

#: criterion -> direction, in the order the report shows them.
DIRECTIONS = {
    "sanity": "lower",
    "faithfulness": "higher",
    "agreement": "higher",
    "constant": "lower",
    "pointing": "higher",
    "energy": "higher",
    "text_pointing": "higher",
}
GROUND_TRUTH = {"image": ("pointing", "energy"), "text": ("text_pointing",)}
#: Fractions removed / inserted by the faithfulness curves (K equal steps).
CURVE_STEPS = 10


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def directions_of(tower: Modality) -> dict[str, str]:
    """The tower's criteria and their directions."""
    other = {k for t, keys in GROUND_TRUTH.items() if t != tower for k in keys}
    return {k: d for k, d in DIRECTIONS.items() if k not in other}


def chance_levels(data: TuneData, tower: Modality) -> dict[str, float]:
    """What a map without information scores on each ground-truth criterion the data has: the mean
    mask area (a random pixel's pointing hit and a uniform map's energy), the mean share of
    relevant word tokens (a random word's text pointing)."""
    if tower == "image":
        masks = [m for m in data.masks if m is not None and bool(m.any())]
        if not masks:
            return {}
        area = _mean([float(m.float().mean()) for m in masks])
        return {"pointing": area, "energy": area}
    shares = [
        len(set(rel) & set(words)) / len(words)
        for rel, words in zip(data.relevant, data.words)
        if rel is not None and words
    ]
    return {"text_pointing": _mean(shares)} if shares else {}


def is_constant(m: torch.Tensor) -> bool:
    return bool(m.numel() == 0 or float(m.max() - m.min()) <= 0.0)


def criteria(
    backend: Backend,
    data: TuneData,
    tower: Modality,
    maps: Sequence[torch.Tensor],
    second: Sequence[torch.Tensor],
    randomised: Sequence[torch.Tensor],
) -> dict[str, float]:
    """Every criterion of one point from its maps, the second seed's and the randomised copy's."""
    out = {
        "sanity": _mean([abs(spearman(a, b)) for a, b in zip(maps, randomised)]),
        "agreement": _mean([spearman(a, b) for a, b in zip(maps, second)]),
        "constant": sum(is_constant(m) for m in maps) / len(maps),
    }
    curves = deletion_insertion(
        backend, data.images, data.texts, list(maps), modality=tower, steps=CURVE_STEPS, seeds=data.seeds
    )
    gaps = (curves["insertion_auc"] - curves["deletion_auc"]).tolist()
    out["faithfulness"] = _mean(gaps)
    out["deletion"] = _mean(curves["deletion_auc"].tolist())  # kept for the report; not a criterion
    out["insertion"] = _mean(curves["insertion_auc"].tolist())
    if tower == "image":
        pairs = [(m, g.to(m.device)) for m, g in zip(maps, data.masks) if g is not None and bool(g.any())]
        if pairs:
            out["pointing"] = _mean([float(pointing_hit(m, g)) for m, g in pairs])
            out["energy"] = _mean([energy_inside(m, g) for m, g in pairs])
    else:
        hits = [
            text_pointing(m, words, rel)
            for m, words, rel in zip(maps, data.words, data.relevant)
            if rel is not None and words
        ]
        if hits:
            out["text_pointing"] = _mean(hits)
    return out
