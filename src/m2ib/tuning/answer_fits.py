"""``m2ib tune`` on a generative VLM: the rows as queries, the fits of a grid point, the copy
randomised above the bottleneck's site, the criteria, and the scoring of the grid into the store.

A point is (site, beta): M2IB on the answer (:func:`m2ib.generative.fit_answer`) with
``image_layer`` = the site (0: the projector's output; l: decoder block l's output at the image
positions) and that beta, every other setting fixed for the run. Its criteria, as the CLIP path's
(:mod:`.criteria`), with the answer's log-likelihood as the model's own score:

* ``sanity`` (lower): mean over rows of |Spearman| between the map and the map of a copy of the
  model whose language-model blocks above the site and ``lm_head`` are randomised
  (:func:`randomised_above_site`; the vision tower, the projector, the input embeddings and the
  blocks up to the site are the trained ones, so the bottleneck reads the same R);
* ``faithfulness`` (higher): mean over rows of insertion AUC minus deletion AUC of the answer's
  log-likelihood (:func:`m2ib.generative.metrics.answer_curve`, on the image tokens where they enter
  the language model, :data:`~m2ib.tuning.criteria.CURVE_STEPS` steps, zero baseline) ranked by the map;
* ``agreement`` (higher): mean Spearman between the maps of seeds ``seed`` and ``seed + 1``;
* ``constant`` (lower): the share of rows whose map is the same on every grid cell;
* ``pointing`` and ``energy`` (higher), rows with a mask only: the map's maximum inside the mask,
  the share of the map's mass inside it (:mod:`m2ib.metrics.localisation`); the mask is passed
  through the family's own processor as an image (:func:`display_mask`), so it sits where the
  map does, at the model's input size. Chance level of both: the mean mask area.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..generative.base import GenerativeBackend, Query, evaluation_mode
from ..generative.m2ib import AnswerFit, AnswerM2IBSettings, decoder_blocks, fit_answer
from ..generative.metrics import answer_curve
from ..metrics.localisation import energy_inside, pointing_hit
from ..metrics.sanity import randomise_, spearman
from .answer_data import VQARow
from .criteria import CURVE_STEPS, is_constant
from .run import Grid, Progress, preview
from .store import Store

#: Settings a point sets (the grid's and the run's); the rest are fixed for the run.
POINT_SETTINGS = ("beta", "image_layer", "seed", "per_word", "prompt_side", "prompt_layer")


@dataclass(frozen=True)
class AnswerItem:
    """One row as the model's inputs: its query, the answer explained, and where it came from."""

    row: VQARow
    query: Query
    answer: str
    source: str  # "given" or "generated"
    mask: torch.Tensor | None = None  # [H, W] bool at the model's input size (the map's)


def display_mask(backend: GenerativeBackend, row: VQARow, size: tuple[int, int]) -> torch.Tensor:
    """The row's mask as the model sees its image: the mask image (white inside) through the
    family's processor and :meth:`~m2ib.generative.base.GenerativeBackend.display_image` (its
    resize and crop), channels averaged, above one half; one line when it does not land at ``size``."""
    from ..inputs import load_image

    picture, _ = load_image(row.mask)
    shown = backend.display_image(backend.prompt_inputs(picture, row.prompt)).float().mean(0) > 0.5
    if tuple(shown.shape) != size:
        raise InputError(f"--data {row.id}: the mask lands at {tuple(shown.shape)}, the map at {size}")
    return shown


def prepare_items(backend: GenerativeBackend, rows: Sequence[VQARow], max_new_tokens: int) -> list[AnswerItem]:
    """Each row's query; an empty answer is the model's own greedy one (deterministic: a resumed run
    gets the same). A prompt the family cannot read is one line naming the row."""
    from ..inputs import load_image

    for row in rows:  # every prompt checked before any generation
        try:
            backend.check_prompt(row.prompt)
        except InputError as exc:
            raise InputError(f"--data {row.id}: {exc}") from None
    items = []
    for row in rows:
        picture, _ = load_image(row.image)
        answer, source = row.answer, "given"
        if not answer:
            answer, source = backend.generate(picture, row.prompt, max_new_tokens), "generated"
            if not answer.strip():
                raise InputError(f"--data {row.id}: the model's own answer is empty; give one in the answer column")
        query = backend.prepare(picture, row.prompt, answer)
        size = (int(query.display.shape[-2]), int(query.display.shape[-1]))
        mask = display_mask(backend, row, size) if row.mask else None
        items.append(AnswerItem(row, query, answer, source, mask))
    return items


def chance_levels(items: Sequence[AnswerItem]) -> dict[str, float]:
    """The chance level of pointing and energy: the mean area of the rows' masks ({} without masks)."""
    areas = [float(it.mask.float().mean()) for it in items if it.mask is not None and bool(it.mask.any())]
    return {"pointing": _mean(areas), "energy": _mean(areas)} if areas else {}


def point_settings(fixed: dict[str, Any], layer: int, beta: float, seed: int) -> AnswerM2IBSettings:
    """The settings of the point (``layer``, ``beta``): the whole-answer map only."""
    return AnswerM2IBSettings(
        **{**fixed, "beta": beta, "image_layer": layer, "seed": seed, "per_word": False, "prompt_side": False}
    )


def randomised_above_site(backend: GenerativeBackend, layer: int, seed: int) -> GenerativeBackend:
    """A backend on a copy of the model whose ``lm_head`` and language-model blocks above the site
    ``layer`` (blocks l+1 .. L, 1-based; every block for the projector site 0) are re-initialised
    from ``seed`` (:func:`m2ib.metrics.sanity.randomise_`); a head tied to the input embeddings is
    untied first, so the embeddings below the site stay trained. The model given is never touched."""
    import copy

    model = copy.deepcopy(backend.model)
    clone = type(backend)(model, backend.processor)
    blocks = list(decoder_blocks(clone, "--layers"))
    if not 0 <= layer < len(blocks):
        raise InputError(f"--layers: {layer} is not a site of the language model's {len(blocks)} blocks")
    head = model.get_output_embeddings()
    if head is None:
        raise InputError("the model has no output embeddings (lm_head) to randomise for the sanity criterion")
    if head.weight is model.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    randomise_([head, *reversed(blocks[layer:])], seed * 1009 + layer)
    return clone


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def answer_criteria(
    backend: GenerativeBackend,
    items: Sequence[AnswerItem],
    fits: Sequence[AnswerFit],
    second: Sequence[AnswerFit],
    randomised: Sequence[AnswerFit],
) -> dict[str, float]:
    """Every criterion of one point from its fits, the second seed's and the randomised copy's."""
    out = {
        "sanity": _mean([abs(spearman(a.image_map, b.image_map)) for a, b in zip(fits, randomised)]),
        "agreement": _mean([spearman(a.image_map, b.image_map) for a, b in zip(fits, second)]),
        "constant": sum(is_constant(f.grid_map) for f in fits) / len(fits),
    }
    deletion: list[float] = []
    insertion: list[float] = []
    for item, f in zip(items, fits):
        for kind, into in (("deletion", deletion), ("insertion", insertion)):
            curve = answer_curve(backend, item.query, f.token_scores, insertion=kind == "insertion", steps=CURVE_STEPS)
            into.append(curve.auc)
    out["faithfulness"] = _mean([i - d for i, d in zip(insertion, deletion)])
    out["deletion"] = _mean(deletion)  # kept for the report; not criteria
    out["insertion"] = _mean(insertion)
    pairs = [(f.image_map, it.mask) for it, f in zip(items, fits) if it.mask is not None and bool(it.mask.any())]
    if pairs:
        out["pointing"] = _mean([float(pointing_hit(m, g)) for m, g in pairs])
        out["energy"] = _mean([energy_inside(m, g) for m, g in pairs])
    return out


def point_record(
    backend: GenerativeBackend,
    randomised: GenerativeBackend,
    items: Sequence[AnswerItem],
    point: Any,
    fixed: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """One point's record: three fits per row (the map, the second seed's, the randomised copy's), its criteria."""
    start, cpu = time.perf_counter(), time.process_time()
    s = point_settings(fixed, point.layer, point.beta, seed)
    s2 = point_settings(fixed, point.layer, point.beta, seed + 1)
    with evaluation_mode(backend.model), evaluation_mode(randomised.model):
        fits = [fit_answer(backend, it.query, s) for it in items]
        second = [fit_answer(backend, it.query, s2) for it in items]
        rand = [fit_answer(randomised, it.query, s) for it in items]
        values = answer_criteria(backend, items, fits, second, rand)
    return {
        "key": point.key,
        "tower": point.tower,
        "variant": point.variant,
        "layer": point.layer,
        "beta": point.beta,
        "settings": {"image_layer": point.layer, "beta": point.beta},
        "criteria": values,
        "preview": preview([f.image_map for f in fits], "image"),
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
    }


def score_answer_grid(
    backend: GenerativeBackend,
    items: Sequence[AnswerItem],
    grid: Grid,
    store: Store,
    seed: int,
    fixed: dict[str, Any],
    progress: bool = True,
) -> None:
    """Score every point of ``grid`` not yet in ``store``, one synced record per point as it finishes;
    per site, one randomised copy shared by its betas."""
    bar = Progress(len(grid), grid.done(store), progress)
    randomised: GenerativeBackend | None = None
    try:
        for _, layer, todo in grid.todo(store):
            randomised = None  # the last site's copy freed before the next is made: one copy at a time
            randomised = randomised_above_site(backend, layer, seed)
            for point in todo:
                record = point_record(backend, randomised, items, point, fixed, seed)
                store.append(record)
                bar.update(1, f"site {point.layer} beta {point.beta:g}")
    finally:
        bar.close()


__all__ = [
    "POINT_SETTINGS",
    "AnswerItem",
    "answer_criteria",
    "chance_levels",
    "display_mask",
    "point_settings",
    "prepare_items",
    "randomised_above_site",
    "score_answer_grid",
]
