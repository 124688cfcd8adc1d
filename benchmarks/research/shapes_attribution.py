"""How good M2IB's maps are on the shapes world: the pointing game on "single" captions, the
present-vs-absent text share on "mixed" captions, and the validation-split search of M2IB's
layers and betas (see :mod:`research.shapes_quality`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from m2ib.backends.base import Backend
from m2ib.metrics.localisation import energy_inside, pointing_hit

from .shapes_pairs import (
    Pairs,
    attribution_pairs,
    check_n,
    check_split,
    explain_pairs,
    present_absent_margin,
    token_word_alignment,
)

#: Betas tried by :func:`select_settings` when none are given (the paper uses 0.1).
DEFAULT_BETAS: tuple[float, ...] = (0.01, 0.1, 1.0)


def _pointing_on(
    backend: Backend, pairs: Pairs, settings: dict | None, batch_size: int, progress: bool | None
) -> dict[str, float]:
    exps = explain_pairs(backend, pairs, "image", settings, batch_size, progress)
    hits, energies, areas = [], [], []
    for exp, scene, caption in zip(exps, pairs.scenes, pairs.captions):
        mask = scene.masks[caption.objects[0]]
        if tuple(exp.image_map.shape) != tuple(mask.shape):
            raise ValueError(f"image map {tuple(exp.image_map.shape)} and mask {tuple(mask.shape)} do not align")
        hits.append(pointing_hit(exp.image_map, mask))
        energies.append(energy_inside(exp.image_map, mask))
        areas.append(float(mask.float().mean()))
    n = len(exps)
    return {"pointing": sum(hits) / n, "energy": sum(energies) / n, "mask_fraction": sum(areas) / n, "n": n}


def m2ib_pointing(
    backend: Backend,
    n: int = 60,
    split: str = "test",
    settings: dict | None = None,
    batch_size: int = 16,
    progress: bool | None = True,
) -> dict[str, float]:
    """M2IB image maps for "single" captions: pointing game and energy inside the named object.

    Scene ``i`` (i = 0..n-1) is ``render_scene(split_seed(split, i), size, n_objects=(2, 4))``
    at the model's input size, captioned ``make_caption(scene, "single")``; only the image side
    is explained, with ``m2ib.explain(..., **settings)`` (the model's recommended settings
    fill in what ``settings`` leaves out).

    Returns ``{"pointing": share of maps whose maximum (first argmax) lies in the named
    object's mask, "energy": mean share of map mass inside that mask, "mask_fraction": mean
    area share of the mask (what a uniform map's energy and a random point's hit rate would
    be), "n": n}``. Higher pointing and energy are better.
    """
    pairs = attribution_pairs(backend, n, split, "single")
    return _pointing_on(backend, pairs, settings, batch_size, progress)


def _mixed_on(
    backend: Backend, pairs: Pairs, settings: dict | None, batch_size: int, progress: bool | None
) -> dict[str, float]:
    exps = explain_pairs(backend, pairs, "text", settings, batch_size, progress)
    hits, margins = [], []
    for exp, caption in zip(exps, pairs.captions):
        margin = present_absent_margin(token_word_alignment(backend, caption), exp.text_map)
        hits.append(margin > 0)
        margins.append(margin)
    n = len(exps)
    return {"mixed": sum(hits) / n, "margin": sum(margins) / n, "n": n}


def m2ib_mixed(
    backend: Backend,
    n: int = 60,
    split: str = "test",
    settings: dict | None = None,
    batch_size: int = 16,
    progress: bool | None = True,
) -> dict[str, float]:
    """M2IB text maps for "mixed" captions: do the present object's words outscore the absent one's?

    Scene ``i`` (i = 0..n-1) is ``render_scene(split_seed(split, i), size, n_objects=(2, 4))``
    captioned ``make_caption(scene, "mixed")`` (one present object and one absent object whose
    colour and shape occur nowhere in the scene); only the text side is explained.

    A pair is a hit when the present object's score is strictly greater than the absent
    object's. An object's score is the mean over its colour word and its shape word of the
    word's ``text_map`` score, and a word's score is the mean over its tokens (found with
    :func:`token_word_alignment`; with a one-token-per-word tokenizer this is simply the mean
    of the two tokens' scores, and a word split into several tokens still counts once).
    Returns ``{"mixed": share of hits, "margin": mean (present - absent) score difference,
    "n": n}``. Higher is better; chance is about 0.5.
    """
    pairs = attribution_pairs(backend, n, split, "mixed")
    return _mixed_on(backend, pairs, settings, batch_size, progress)


def _layers_for(backend: Backend, modality: str, layers: Sequence[int] | None, name: str) -> list[int]:
    if layers is None:
        return list(range(backend.num_layers(modality)))
    out: list[int] = []
    for layer in layers:
        resolved = backend.resolve_layer(modality, layer, name)
        if resolved not in out:
            out.append(resolved)
    return out


def select_settings(
    backend: Backend,
    layers: Sequence[int] | None = None,
    betas: Sequence[float] = DEFAULT_BETAS,
    n: int = 30,
    split: str = "val",
    settings: dict | None = None,
    batch_size: int = 16,
    progress: bool | None = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Choose M2IB's bottleneck layer and beta per tower on the validation split.

    The image side tries every ``vision_layer`` x ``vision_beta`` in ``layers`` x ``betas`` and
    keeps the highest pointing game (:func:`m2ib_pointing`'s scenes and captions, ties broken
    by energy, then by grid order); the text side tries every ``text_layer`` x ``text_beta``
    and keeps the highest mixed-caption share (:func:`m2ib_mixed`, ties broken by margin, then
    by grid order). ``layers=None`` tries every block of each tower; indices may be negative.
    ``settings`` are fixed for every run (e.g. ``steps``, ``samples``, ``seed``). The scenes
    are ``split_seed(split, i)``, i = 0..n-1, rendered once and reused for every grid point.

    ``split`` must not be ``"test"``: the test split is never read here.

    Returns ``(best, rows)``: ``best = {"vision_layer", "vision_beta", "text_layer",
    "text_beta"}`` (ready for ``m2ib.json``'s ``"recommended": {"m2ib": best}``) and one row
    per grid point: ``{"tower", "layer", "beta", "metric", "value", "tie_break", "seconds",
    "best"}``.
    """
    if split == "test":
        raise ValueError("select_settings must not use the test split; use split='val'")
    check_split(split)
    check_n(n)
    betas = list(betas)
    if not betas:
        raise ValueError("give at least one beta")
    base = dict(settings or {})
    vision_layers = _layers_for(backend, "image", layers, "vision_layer")
    text_layers = _layers_for(backend, "text", layers, "text_layer")
    towers = [
        (
            "image",
            "vision",
            vision_layers,
            attribution_pairs(backend, n, split, "single"),
            _pointing_on,
            "pointing",
            "energy",
        ),
        ("text", "text", text_layers, attribution_pairs(backend, n, split, "mixed"), _mixed_on, "mixed", "margin"),
    ]
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    for tower, prefix, tower_layers, pairs, evaluate, metric, tie_metric in towers:
        tower_rows = []
        for layer, beta in itertools.product(tower_layers, betas):
            run = {**base, f"{prefix}_layer": layer, f"{prefix}_beta": float(beta)}
            start = time.perf_counter()
            result = evaluate(backend, pairs, run, batch_size, progress)
            tower_rows.append(
                {
                    "tower": tower,
                    "layer": layer,
                    "beta": float(beta),
                    "metric": metric,
                    "value": result[metric],
                    "tie_break": result[tie_metric],
                    "seconds": time.perf_counter() - start,
                    "best": False,
                }
            )
        winner = max(tower_rows, key=lambda r: (r["value"], r["tie_break"]))  # max keeps the first of equals
        winner["best"] = True
        best[f"{prefix}_layer"] = winner["layer"]
        best[f"{prefix}_beta"] = winner["beta"]
        rows.extend(tower_rows)
    return best, rows


def format_selection(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`select_settings` as a markdown table."""
    lines = [
        "| tower | layer | beta | metric | value | tie-break | seconds | best |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['tower']} | {r['layer']} | {r['beta']:g} | {r['metric']} | {r['value']:.3f} | "
            f"{r['tie_break']:.3f} | {r['seconds']:.2f} | {'**yes**' if r['best'] else ''} |"
        )
    return "\n".join(lines)
