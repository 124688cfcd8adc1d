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

The measures live in three rooms: :mod:`~research.shapes_pairs` (scenes and captions
as model inputs), :mod:`~research.shapes_model` (model quality, the random control) and
:mod:`~research.shapes_attribution` (attribution quality, the settings search); the map
against mask measures are metrics (:mod:`m2ib.metrics.localisation`). This module gathers them.
"""

from __future__ import annotations

from m2ib.metrics.localisation import energy_inside, pointing_hit

from .shapes_attribution import DEFAULT_BETAS, format_selection, m2ib_mixed, m2ib_pointing, select_settings
from .shapes_model import random_control, retrieval_r1, zero_shot_accuracy
from .shapes_pairs import present_absent_margin, scene_size, token_word_alignment

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
