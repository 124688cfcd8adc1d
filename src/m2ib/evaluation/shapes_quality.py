"""How good a CLIP and its M2IB maps are on the shapes world, where the ground truth is exact.

Every number here is a share or a mean in [0, 1]; **higher is better** for all of them.

Model quality (no attribution):

* :func:`zero_shot_accuracy`: single-object scenes of every colour x shape class, classified
  by their most similar prompt among :func:`~m2ib.datasets.shapes.class_prompts`.
* :func:`retrieval_r1`: text -> image recall at 1 among 2-object scenes captioned with
  every object they hold.

Attribution quality (M2IB, through :func:`m2ib.explain`):

* :func:`m2ib_pointing`: pointing game and energy inside the named object's exact mask, for
  "single" captions ("a red circle") of 2-4-object scenes.
* :func:`m2ib_mixed`: for "mixed" captions (one present and one absent object, "a red circle
  and a blue star"), the share of pairs whose present object's words score higher on the
  text map than the absent object's words.
* :func:`select_settings`: grid search of the bottleneck layer and beta per tower, on the
  validation split only.

Reproducibility: scene ``i`` of a split is ``render_scene(split_seed(split, i), size=S, ...)``
with ``S`` the model's input side (so masks align pixel for pixel with ``Explanation.image_map``),
and captions are ``make_caption(scene, kind)`` with their default, scene-derived seed. The
exact seeds of each function are given in its docstring; results depend only on the model,
the arguments and the M2IB settings (whose own ``seed`` defaults to 0).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import api
from ..backends.base import Backend
from ..datasets.shapes import (
    SPLITS,
    Caption,
    Scene,
    Span,
    caption_matches,
    class_prompts,
    make_caption,
    render_scene,
    split_seed,
)

__all__ = [
    "TARGETS",
    "DEFAULT_BETAS",
    "scene_size",
    "token_word_alignment",
    "pointing_hit",
    "energy_inside",
    "zero_shot_accuracy",
    "retrieval_r1",
    "m2ib_pointing",
    "m2ib_mixed",
    "present_absent_margin",
    "select_settings",
    "format_selection",
    "random_control",
]

#: Acceptance targets for the trained shapes model (share in [0, 1], at least).
TARGETS: dict[str, float] = {"zero_shot": 0.95, "retrieval_r1": 0.80, "pointing": 0.90, "mixed": 0.80}

#: Betas tried by :func:`select_settings` when none are given (the paper uses 0.1).
DEFAULT_BETAS: tuple[float, ...] = (0.01, 0.1, 1.0)

#: Objects per scene for the attribution metrics (inclusive range).
ATTRIBUTION_OBJECTS: tuple[int, int] = (2, 4)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def scene_size(backend: Backend) -> int:
    """Side in pixels at which scenes are rendered for ``backend``: its input size (square)."""
    height, width = backend.geometry.image_size
    if height != width:
        raise ValueError(f"the model reads {height}x{width} images; shapes scenes are square")
    return int(height)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _check_n(n: int, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name}={n!r} must be a positive integer")


def token_word_alignment(backend: Backend, caption: Caption) -> list[Span | None]:
    """For each token of ``backend.tokenize([caption.text]).tokens[0]``, the caption span it lies in.

    A token belongs to a span (a colour or shape word, see :class:`~m2ib.datasets.shapes.Span`)
    when its character range, from the tokenizer's offsets
    (``backend.tokenizer(text, return_offsets_mapping=True)``), overlaps the span's; CLIP
    tokens never cross a word boundary, so a word split into several tokens maps each of
    them to the same span. Start/end tokens, articles, "and" and punctuation map to ``None``.
    The list has one entry per token, aligned with ``Explanation.tokens`` and ``text_map``.
    """
    text = caption.text
    tokens = backend.tokenize([text]).tokens[0]
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"model {backend.name!r} has no tokenizer: token offsets are needed")
    limit = backend.geometry.context_length
    try:
        encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=limit)
    except NotImplementedError:  # slow tokenizers have no offsets
        raise ValueError("token_word_alignment needs a fast tokenizer (return_offsets_mapping)") from None
    ids = encoded["input_ids"]
    offsets = encoded["offset_mapping"]
    if len(offsets) != len(tokens):
        raise ValueError(f"the tokenizer gives {len(offsets)} offsets for {len(tokens)} tokens of {text!r}")
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[Span | None] = []
    for token_id, (start, end) in zip(ids, offsets):
        found = None
        if token_id not in specials and end > start:
            for span in caption.spans:
                if max(start, span.start) < min(end, span.end):
                    found = span
                    break
        out.append(found)
    return out


def pointing_hit(image_map: torch.Tensor, mask: torch.Tensor) -> bool:
    """Pointing game: is the map's maximum inside the mask?

    The maximum is the *first* argmax in row-major order (``torch.argmax`` of the flattened
    map), so a constant map points at pixel (0, 0), which no shapes object covers (objects keep
    a border): a map that says nothing counts as a miss. NaNs never win. ``image_map`` is
    [H, W]; ``mask`` is a bool [H, W] of the same shape. True is good.
    """
    _check_pair(image_map, mask)
    flat = torch.nan_to_num(image_map.detach().float().flatten(), nan=float("-inf"))
    return bool(mask.flatten()[int(torch.argmax(flat))])


def energy_inside(image_map: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the map's mass inside the mask: ``sum(map * mask) / sum(map)``, in [0, 1].

    Negative values and NaNs are counted as 0 (maps from ``explain`` are in [0, 1] anyway). A
    map with no mass at all gives 0.0. Higher is better; a uniform map scores the mask's area
    fraction.
    """
    _check_pair(image_map, mask)
    m = torch.nan_to_num(image_map.detach().double(), nan=0.0, posinf=0.0).clamp_min(0.0)
    total = float(m.sum())
    if total <= 0.0:
        return 0.0
    return float(m[mask.bool()].sum()) / total


def _check_pair(image_map: torch.Tensor, mask: torch.Tensor) -> None:
    if image_map.ndim != 2 or tuple(image_map.shape) != tuple(mask.shape):
        raise ValueError(f"image_map {tuple(image_map.shape)} and mask {tuple(mask.shape)} must both be "
                         "[H, W] of the same size (render scenes at the model's input size)")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")


@dataclass(frozen=True)
class _Pairs:
    """Scenes, one caption each, and the model's input tensors for them (checked to align)."""

    scenes: list[Scene]
    captions: list[Caption]
    pixel_values: torch.Tensor  # [n, 3, S, S]


def _model_pixels(backend: Backend, scenes: Sequence[Scene]) -> torch.Tensor:
    """Preprocess scenes once; fail if the model's preprocessing moves any pixel (then masks
    would not align with the maps)."""
    size = scene_size(backend)
    batch = backend.preprocess_images([s.to_pil() for s in scenes])
    rendered = torch.stack([s.image for s in scenes])
    if rendered.shape[-2:] != (size, size) or tuple(batch.pixel_values.shape[-2:]) != (size, size):
        raise ValueError(f"scenes are {tuple(rendered.shape[-2:])} but the model reads {(size, size)}")
    if batch.display is not None and not torch.allclose(batch.display.float(), rendered, atol=1e-6):
        raise ValueError("the model's preprocessing changes scenes rendered at its input size "
                         "(resize/crop settings differ from the input size): masks would not align")
    return batch.pixel_values


def _attribution_pairs(backend: Backend, n: int, split: str, kind: str) -> _Pairs:
    """Scenes ``render_scene(split_seed(split, i), size, n_objects=(2, 4))``, i = 0..n-1, with
    ``make_caption(scene, kind)``."""
    _check_split(split)
    _check_n(n)
    size = scene_size(backend)
    scenes = [render_scene(split_seed(split, i), size=size, n_objects=ATTRIBUTION_OBJECTS) for i in range(n)]
    captions = [make_caption(scene, kind) for scene in scenes]
    return _Pairs(scenes, captions, _model_pixels(backend, scenes))


def _explain(backend: Backend, pairs: _Pairs, modality: str, settings: dict | None, batch_size: int,
             progress: bool | None):
    exps = api.explain(backend, None, [c.text for c in pairs.captions], pixel_values=pairs.pixel_values,
                       modalities=(modality,), batch_size=batch_size, progress=progress, **(settings or {}))
    return exps if isinstance(exps, list) else [exps]


# --------------------------------------------------------------------------------------------
# Model quality
# --------------------------------------------------------------------------------------------


def zero_shot_accuracy(backend: Backend, n_per_class: int = 10, split: str = "test", size: int | None = None,
                       batch_size: int = 64) -> float:
    """Zero-shot classification accuracy over the 30 colour x shape classes, in [0, 1] (higher is better).

    Class ``k`` of ``class_prompts()`` (canonical order), copy ``j``: the single-object scene
    ``render_scene(split_seed(split, k * n_per_class + j), size, n_objects=(1, 1),
    colours=[colour_k], shapes=[shape_k])``. An image is correct when its highest cosine
    similarity among the 30 prompts is its own class's prompt (ties: the first prompt).
    ``size`` defaults to the model's input size. Chance is 1/30.
    """
    _check_split(split)
    _check_n(n_per_class, "n_per_class")
    size = scene_size(backend) if size is None else int(size)
    classes = class_prompts()
    images, labels = [], []
    for k, (colour, shape, _prompt) in enumerate(classes):
        for j in range(n_per_class):
            scene = render_scene(split_seed(split, k * n_per_class + j), size=size, n_objects=(1, 1),
                                 colours=[colour], shapes=[shape])
            images.append(scene.to_pil())
            labels.append(k)
    sims = api.similarity(backend, images, [p for _, _, p in classes], batch_size=batch_size)
    predicted = sims.argmax(dim=1)
    return float((predicted == torch.tensor(labels)).float().mean())


def retrieval_r1(backend: Backend, n: int = 100, split: str = "test", n_objects: tuple[int, int] = (2, 2),
                 strict: bool = False, batch_size: int = 64) -> float:
    """Text -> image recall at 1 among ``n`` scenes, in [0, 1] (higher is better).

    Scene ``i`` is ``render_scene(split_seed(split, i), size, n_objects)`` (size: the model's
    input size) and its caption ``make_caption(scene, "all")`` names every object in it. For
    each caption the top image is the one of highest cosine similarity (ties: the first).
    It is a hit when that image contains every (colour, shape) the caption names
    (:func:`caption_matches`): its own scene, or another scene that happens to hold the same
    objects, which the caption describes just as well. ``strict=True`` counts only its own
    scene. Chance is about 1/n.
    """
    _check_split(split)
    _check_n(n)
    size = scene_size(backend)
    scenes = [render_scene(split_seed(split, i), size=size, n_objects=n_objects) for i in range(n)]
    captions = [make_caption(scene, "all") for scene in scenes]
    sims = api.similarity(backend, [s.to_pil() for s in scenes], [c.text for c in captions],
                          batch_size=batch_size)  # [images, texts]
    top = sims.argmax(dim=0).tolist()
    if strict:
        hits = [t == j for j, t in enumerate(top)]
    else:
        hits = [caption_matches(captions[j], scenes[t]) for j, t in enumerate(top)]
    return sum(hits) / n


# --------------------------------------------------------------------------------------------
# Attribution quality
# --------------------------------------------------------------------------------------------


def _pointing_on(backend: Backend, pairs: _Pairs, settings: dict | None, batch_size: int,
                 progress: bool | None) -> dict[str, float]:
    exps = _explain(backend, pairs, "image", settings, batch_size, progress)
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


def m2ib_pointing(backend: Backend, n: int = 60, split: str = "test", settings: dict | None = None,
                  batch_size: int = 16, progress: bool | None = True) -> dict[str, float]:
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
    pairs = _attribution_pairs(backend, n, split, "single")
    return _pointing_on(backend, pairs, settings, batch_size, progress)


def present_absent_margin(spans: Sequence[Span | None], text_map: torch.Tensor) -> float:
    """Present object's text score minus the absent object's (> 0 is a hit in :func:`m2ib_mixed`).

    ``spans`` is :func:`token_word_alignment`'s list and ``text_map`` the [T] token scores. A
    word's score is the mean over its tokens; an object's (present or absent) the mean over its
    words (colour and shape). In [-1, 1] for maps in [0, 1]; higher is better.
    """
    if len(spans) != text_map.shape[0]:
        raise ValueError(f"{len(spans)} aligned tokens but a text map of {text_map.shape[0]} scores")
    words: dict[Span, list[float]] = {}  # each colour/shape word: the scores of its tokens
    for t, sp in enumerate(spans):
        if sp is not None:
            words.setdefault(sp, []).append(float(text_map[t]))
    word_score = {sp: sum(v) / len(v) for sp, v in words.items()}
    present = [v for sp, v in word_score.items() if sp.present]
    absent = [v for sp, v in word_score.items() if not sp.present]
    if not present or not absent:
        raise ValueError("no token of the present object or none of the absent object")
    return sum(present) / len(present) - sum(absent) / len(absent)


def _mixed_on(backend: Backend, pairs: _Pairs, settings: dict | None, batch_size: int,
              progress: bool | None) -> dict[str, float]:
    exps = _explain(backend, pairs, "text", settings, batch_size, progress)
    hits, margins = [], []
    for exp, caption in zip(exps, pairs.captions):
        margin = present_absent_margin(token_word_alignment(backend, caption), exp.text_map)
        hits.append(margin > 0)
        margins.append(margin)
    n = len(exps)
    return {"mixed": sum(hits) / n, "margin": sum(margins) / n, "n": n}


def m2ib_mixed(backend: Backend, n: int = 60, split: str = "test", settings: dict | None = None,
               batch_size: int = 16, progress: bool | None = True) -> dict[str, float]:
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
    pairs = _attribution_pairs(backend, n, split, "mixed")
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


def select_settings(backend: Backend, layers: Sequence[int] | None = None,
                    betas: Sequence[float] = DEFAULT_BETAS, n: int = 30, split: str = "val",
                    settings: dict | None = None, batch_size: int = 16,
                    progress: bool | None = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
    _check_split(split)
    _check_n(n)
    betas = list(betas)
    if not betas:
        raise ValueError("give at least one beta")
    base = dict(settings or {})
    vision_layers = _layers_for(backend, "image", layers, "vision_layer")
    text_layers = _layers_for(backend, "text", layers, "text_layer")
    towers = [
        ("image", "vision", vision_layers, _attribution_pairs(backend, n, split, "single"), _pointing_on,
         "pointing", "energy"),
        ("text", "text", text_layers, _attribution_pairs(backend, n, split, "mixed"), _mixed_on,
         "mixed", "margin"),
    ]
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    for tower, prefix, tower_layers, pairs, evaluate, metric, tie_metric in towers:
        tower_rows = []
        for layer, beta in itertools.product(tower_layers, betas):
            run = {**base, f"{prefix}_layer": layer, f"{prefix}_beta": float(beta)}
            start = time.perf_counter()
            result = evaluate(backend, pairs, run, batch_size, progress)
            tower_rows.append({"tower": tower, "layer": layer, "beta": float(beta), "metric": metric,
                               "value": result[metric], "tie_break": result[tie_metric],
                               "seconds": time.perf_counter() - start, "best": False})
        winner = max(tower_rows, key=lambda r: (r["value"], r["tie_break"]))  # max keeps the first of equals
        winner["best"] = True
        best[f"{prefix}_layer"] = winner["layer"]
        best[f"{prefix}_beta"] = winner["beta"]
        rows.extend(tower_rows)
    return best, rows


def format_selection(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`select_settings` as a markdown table."""
    lines = ["| tower | layer | beta | metric | value | tie-break | seconds | best |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['tower']} | {r['layer']} | {r['beta']:g} | {r['metric']} | {r['value']:.3f} | "
                     f"{r['tie_break']:.3f} | {r['seconds']:.2f} | {'**yes**' if r['best'] else ''} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Random-weight control
# --------------------------------------------------------------------------------------------


def random_control(backend: Backend, seed: int = 0) -> Backend:
    """The same architecture, tokenizer and preprocessing with freshly initialised random weights.

    The model is deep-copied (``backend.model`` is untouched) and every module is
    re-initialised with the model's own ``_init_weights`` under ``torch.manual_seed(seed)``
    inside ``torch.random.fork_rng`` (the caller's random state is unchanged), so the control
    is the same for a given model and seed. The recommended settings are copied, so the
    control is explained with exactly the trained model's settings.
    """
    model = copy.deepcopy(backend.model)
    if not hasattr(model, "_init_weights"):
        raise ValueError(f"{type(model).__name__} has no _init_weights to re-initialise it with")
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.ndim >= 2}
    tensors = list(model.parameters()) + list(model.buffers())
    for t in tensors:  # transformers skips tensors flagged as loaded from a checkpoint
        if hasattr(t, "_is_hf_initialized"):
            t._is_hf_initialized = False
    for module in model.modules():
        if hasattr(module, "_is_hf_initialized"):
            module._is_hf_initialized = False
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            model.apply(model._init_weights)
    unchanged = [name for name, p in model.named_parameters() if name in before and torch.equal(p, before[name])]
    if unchanged:
        raise RuntimeError(f"re-initialisation left {len(unchanged)} weight matrices unchanged, e.g. {unchanged[0]}")
    control = api.load(model, tokenizer=getattr(backend, "tokenizer", None), dtype=None)
    if hasattr(backend, "preprocessing"):
        control.preprocessing = backend.preprocessing
    control.recommended = copy.deepcopy(backend.recommended)
    control.name = f"{backend.name} (random re-init, seed {seed})"
    return control
