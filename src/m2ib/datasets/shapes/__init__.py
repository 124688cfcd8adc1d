"""A procedurally rendered "shapes world" with exact ground truth.

Every scene is a small RGB image holding 1 to 4 hard-edged, non-overlapping
objects (a colour and a shape each, unique within the scene) on a textured,
noisy, low-saturation background.  Because everything is rendered here, the
ground truth is exact:

* ``Scene.masks[i]`` is precisely the set of pixels painted with object ``i``'s
  colour (object pixels carry at most ``OBJECT_NOISE_MAX`` of per-channel
  noise; background pixels are kept at least ``BACKGROUND_MIN_DISTANCE`` away
  from every object colour, in max-channel distance);
* ``ShapeObject.box`` is the tight bounding box of that mask;
* each ``Caption`` carries character spans for every colour and shape word it
  contains, tied to the object it names (or marked absent).

Captions are plain English, e.g. ``"a red circle"``, ``"a red circle and a blue
star"``, ``"a red circle, a blue star and an orange cross"`` (the article is
"an" before a vowel, as a person would type it; use :func:`phrase`).

Everything is deterministic given a seed; only ``numpy.random.default_rng``
generators created locally are used, never global random state.  This package
imports nothing else from ``m2ib``.

Rooms: ``world`` (vocabulary, noise model, :class:`Scene`), ``geometry`` (shape
masks), ``render`` (:func:`render_scene`), ``captions`` (:func:`make_caption`)
and ``dataset`` (:func:`split_seed`, :class:`ShapesDataset`).  A new shape is a
name in ``world.SHAPES`` plus its mask in ``geometry._shape_mask``.
"""

from __future__ import annotations

from .captions import KINDS, Caption, Span, caption_matches, class_prompts, make_caption, phrase
from .dataset import SPLITS, ShapesDataset, collate_scenes, split_seed
from .render import render_scene
from .world import BACKGROUND_MIN_DISTANCE, COLOURS, OBJECT_NOISE_MAX, OBJECT_NOISE_SD, SHAPES, Scene, ShapeObject

__all__ = [
    "COLOURS",
    "SHAPES",
    "OBJECT_NOISE_MAX",
    "OBJECT_NOISE_SD",
    "BACKGROUND_MIN_DISTANCE",
    "KINDS",
    "SPLITS",
    "ShapeObject",
    "Span",
    "Caption",
    "Scene",
    "render_scene",
    "make_caption",
    "caption_matches",
    "split_seed",
    "phrase",
    "class_prompts",
    "collate_scenes",
    "ShapesDataset",
]
