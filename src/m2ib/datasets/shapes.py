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
generators created locally are used, never global random state.  This module
imports nothing else from ``m2ib``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "COLOURS",
    "SHAPES",
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

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

#: Object colours, name -> RGB (0..255).  Insertion order is canonical.
#: All are strongly saturated (max - min channel >= 150) and pairwise at least
#: 90 apart in their most different channel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 180, 40),
    "blue": (35, 75, 230),
    "yellow": (235, 215, 25),
    "orange": (245, 130, 20),
    "purple": (150, 40, 210),
}

#: Shapes, canonical order.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Caption kinds accepted by :func:`make_caption`.
KINDS: tuple[str, ...] = ("single", "subset", "all", "mixed")

#: Dataset splits, in the order of their seed residue (see :func:`split_seed`).
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Stable integer codes for caption kinds (used to derive caption seeds; never
# Python's salted ``hash``).
_KIND_CODE = {"single": 1, "subset": 2, "all": 3, "mixed": 4}

# Object side length as a fraction of the image side.
SIZE_FRACTION: tuple[float, float] = (0.18, 0.32)
# Minimum number of background pixels between two objects' boxes.
OBJECT_GAP = 3
# Minimum number of pixels between an object's box and the image border.
BORDER = 1

# Noise model (all in [0, 1] intensity units).
OBJECT_NOISE_SD = 0.015
#: Largest per-channel deviation of an object pixel from its nominal colour
#: (before the final quantisation to multiples of 1/255, which adds <= 0.5/255).
OBJECT_NOISE_MAX = 10 / 255
# Background pixels are forced to have chroma (max - min channel) <= this.
_BACKGROUND_MAX_CHROMA = 60 / 255
#: Lower bound on the max-channel distance between any background pixel and
#: any object colour: (min object chroma - max background chroma) / 2.
BACKGROUND_MIN_DISTANCE = (
    min(max(c) - min(c) for c in COLOURS.values()) / 255 - _BACKGROUND_MAX_CHROMA
) / 2

_COLOUR_ARRAY = {k: np.asarray(v, dtype=np.float32) / 255.0 for k, v in COLOURS.items()}


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.  Its exact mask is ``scene.masks[index]``."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x, y, w, h: tight box of the mask


@dataclass(frozen=True)
class Span:
    """A colour or shape word inside a caption."""

    start: int  # char offset into the caption text
    end: int  # exclusive
    word: str  # == text[start:end]
    role: str  # "colour" or "shape"
    object_index: int  # index into scene.objects, or -1 for an absent object
    present: bool


@dataclass(frozen=True)
class Caption:
    text: str
    kind: str  # "single" | "subset" | "all" | "mixed"
    objects: tuple[int, ...]  # present objects named, in caption order
    absent: tuple[tuple[str, str], ...]  # (colour, shape) named but absent
    spans: tuple[Span, ...]  # colour span then shape span per named object

    def named(self) -> tuple[tuple[str, str], ...]:
        """Every (colour, shape) the caption names, in caption order."""
        out = []
        colour = None
        for sp in self.spans:
            if sp.role == "colour":
                colour = sp.word
            else:
                out.append((colour, sp.word))
                colour = None
        return tuple(out)

    def spans_for(self, present: bool) -> tuple[Span, ...]:
        """The spans of the present (or absent) objects."""
        return tuple(sp for sp in self.spans if sp.present == present)


# eq=False: the tensors make field-wise equality meaningless; scenes compare
# (and hash) by identity.
@dataclass(frozen=True, eq=False)
class Scene:
    seed: int
    size: int
    image: torch.Tensor  # float32 [3, size, size] in [0, 1], multiples of 1/255
    masks: torch.Tensor  # bool [n_objects, size, size]
    objects: tuple[ShapeObject, ...]

    def to_pil(self) -> Image.Image:
        """The image as an RGB uint8 PIL image (lossless: pixels are k/255)."""
        arr = (self.image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)

    def index_of(self, colour: str, shape: str) -> int:
        """Index of the object with this (colour, shape), or -1."""
        for i, o in enumerate(self.objects):
            if o.colour == colour and o.shape == shape:
                return i
        return -1

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((o.colour, o.shape) for o in self.objects)


# --------------------------------------------------------------------------
# Shape rasterisation (pixel-centre sampling, hard edges)
# --------------------------------------------------------------------------


def _convex(u: np.ndarray, v: np.ndarray, verts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Points (u, v) inside the convex polygon ``verts`` (either orientation)."""
    pos = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    neg = pos.copy()
    n = len(verts)
    for k in range(n):
        x0, y0 = verts[k]
        x1, y1 = verts[(k + 1) % n]
        cross = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


def _star_vertices(inner_ratio: float = 0.44):
    # Upright five-pointed star fitting the unit box: outer radius R with
    # height 1.809 R and width 1.902 R.
    r_out = 0.52
    cx = 0.5
    cy = r_out + (1.0 - (1.0 + np.cos(np.pi / 5)) * r_out) / 2.0
    tips, inner = [], []
    for k in range(5):
        a = -np.pi / 2 + k * 2 * np.pi / 5
        tips.append((cx + r_out * np.cos(a), cy + r_out * np.sin(a)))
        b = a + np.pi / 5
        inner.append((cx + inner_ratio * r_out * np.cos(b), cy + inner_ratio * r_out * np.sin(b)))
    return tips, inner


_STAR_TIPS, _STAR_INNER = _star_vertices()


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of ``shape`` filling a side x side box."""
    c = (np.arange(side, dtype=np.float64) + 0.5) / side
    u = c[None, :]  # x
    v = c[:, None]  # y
    if shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "square":
        h = 0.45  # side 0.9 of the box: area close to the circle's
        m = (np.abs(u - 0.5) <= h) & (np.abs(v - 0.5) <= h)
    elif shape == "triangle":
        m = _convex(u, v, [(0.5, 0.04), (1.0, 0.92), (0.0, 0.92)])
    elif shape == "star":
        m = _convex(u, v, _STAR_INNER)
        for k in range(5):
            m |= _convex(u, v, [_STAR_TIPS[k], _STAR_INNER[k], _STAR_INNER[k - 1]])
    elif shape == "cross":
        t = 0.18  # half arm thickness
        e = 0.48  # half arm length
        a, b = np.abs(u - 0.5), np.abs(v - 0.5)
        m = ((a <= t) & (b <= e)) | ((b <= t) & (a <= e))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.broadcast_to(m, (side, side)).copy()


_MASK_CACHE: dict[tuple[str, int], np.ndarray] = {}


def _cached_mask(shape: str, side: int) -> np.ndarray:
    key = (shape, side)
    m = _MASK_CACHE.get(key)
    if m is None:
        m = _shape_mask(shape, side)
        m.flags.writeable = False
        _MASK_CACHE[key] = m
    return m


# --------------------------------------------------------------------------
# Layout and rendering
# --------------------------------------------------------------------------


def _free_position(rng: np.random.Generator, size: int, side: int, boxes) -> tuple[int, int] | None:
    """Uniform top-left corner for a side x side box keeping OBJECT_GAP from
    every box in ``boxes`` and BORDER from the image edge; None if none fits."""
    lo, hi = BORDER, size - BORDER - side  # inclusive range of corners
    if hi < lo:
        return None
    n = hi - lo + 1
    valid = np.ones((n, n), dtype=bool)  # [y, x]
    for bx, by, bw, bh in boxes:
        # invalid iff x in (bx - side - gap, bx + bw + gap), same for y
        x0 = max(bx - side - OBJECT_GAP + 1 - lo, 0)
        x1 = min(bx + bw + OBJECT_GAP - 1 - lo, n - 1)
        y0 = max(by - side - OBJECT_GAP + 1 - lo, 0)
        y1 = min(by + bh + OBJECT_GAP - 1 - lo, n - 1)
        if x0 <= x1 and y0 <= y1:
            valid[y0 : y1 + 1, x0 : x1 + 1] = False
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return None
    k = int(idx[rng.integers(idx.size)])
    return lo + k % n, lo + k // n


def _layout(rng: np.random.Generator, size: int, count: int):
    """Sides and corners of ``count`` objects (fewer only if they cannot fit)."""
    smin = max(6, int(round(SIZE_FRACTION[0] * size)))
    smax = max(smin, int(round(SIZE_FRACTION[1] * size)))
    best: list[tuple[int, int, int]] = []
    for _attempt in range(10):
        sides = rng.integers(smin, smax + 1, size=count)
        placed: list[tuple[int, int, int]] = []  # (x, y, side) in object order
        boxes: list[tuple[int, int, int, int]] = []
        # place the largest first, then restore the sampled order
        order = np.argsort(-sides, kind="stable")
        slots: dict[int, tuple[int, int, int]] = {}
        for j in order:
            s = int(sides[j])
            pos = _free_position(rng, size, s, boxes)
            if pos is None and s > smin:
                s = smin
                pos = _free_position(rng, size, s, boxes)
            if pos is None:
                break
            slots[int(j)] = (pos[0], pos[1], s)
            boxes.append((pos[0], pos[1], s, s))
        placed = [slots[j] for j in sorted(slots)]
        if len(placed) == count:
            return placed
        if len(placed) > len(best):
            best = placed
    return best


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured, noisy, low-saturation background, float32 [3, size, size]."""
    base = _hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.22), rng.uniform(0.28, 0.85))
    img = np.empty((3, size, size), dtype=np.float32)
    img[:] = base[:, None, None]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    # smooth low-frequency texture: a few oriented sinusoids with a slight
    # per-channel tint.  sin(a + b) = sin a cos b + cos a sin b keeps it to
    # outer products of 1-D vectors.
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0.0, 2 * np.pi)
        freq = rng.uniform(0.5, 3.5)  # cycles per image
        phase = rng.uniform(0.0, 2 * np.pi)
        amp = rng.uniform(0.03, 0.10)
        tint = (1.0 + rng.uniform(-0.6, 0.6, size=3)).astype(np.float32)
        ax = 2 * np.pi * freq * np.cos(theta) * coords + phase
        ay = 2 * np.pi * freq * np.sin(theta) * coords
        wave = np.outer(np.cos(ay), np.sin(ax)) + np.outer(np.sin(ay), np.cos(ax))
        img += (amp * tint)[:, None, None] * wave.astype(np.float32)[None]
    # per-pixel Gaussian noise
    sd = rng.uniform(0.015, 0.06)
    img += rng.standard_normal((3, size, size), dtype=np.float32) * np.float32(sd)
    # keep it greyish: cap chroma so it can never be mistaken for an object
    mean = img.mean(axis=0, keepdims=True)
    dev = img - mean
    chroma = dev.max(axis=0) - dev.min(axis=0)
    scale = np.minimum(1.0, _BACKGROUND_MAX_CHROMA / np.maximum(chroma, 1e-6)).astype(np.float32)
    img = mean + dev * scale[None]
    # clipping per channel cannot increase chroma
    np.clip(img, 0.0, 1.0, out=img)
    return img


def _check_names(names: Sequence[str] | None, vocab, what: str) -> list[str]:
    if names is None:
        return list(vocab)
    names = list(names)
    bad = [n for n in names if n not in vocab]
    if bad or not names:
        raise ValueError(f"invalid {what} {bad or names!r}; expected names from {list(vocab)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {what} in {names!r}")
    return names


def render_scene(
    seed: int,
    size: int = 96,
    n_objects: tuple[int, int] = (1, 4),
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
) -> Scene:
    """Render one scene, deterministically from ``seed`` (a non-negative int).

    ``n_objects`` is an inclusive (low, high) range; ``colours`` / ``shapes``
    restrict the vocabulary used for the objects.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    lo, hi = (int(n_objects[0]), int(n_objects[1]))
    if not 1 <= lo <= hi:
        raise ValueError(f"n_objects must satisfy 1 <= low <= high, got {n_objects!r}")
    colour_names = _check_names(colours, COLOURS, "colours")
    shape_names = _check_names(shapes, SHAPES, "shapes")
    pairs = [(c, s) for c in colour_names for s in shape_names]

    rng = np.random.default_rng(int(seed))
    count = min(int(rng.integers(lo, hi + 1)), len(pairs))
    chosen = [pairs[k] for k in rng.choice(len(pairs), size=count, replace=False)]
    placed = _layout(rng, size, count)
    chosen = chosen[: len(placed)]

    img = _background(rng, size)
    masks = np.zeros((len(placed), size, size), dtype=bool)
    objects = []
    for i, ((colour, shape), (x, y, s)) in enumerate(zip(chosen, placed)):
        local = _cached_mask(shape, s)
        masks[i, y : y + s, x : x + s] = local
        ys, xs = np.nonzero(local)
        y0, y1 = int(ys.min()), int(ys.max())
        x0, x1 = int(xs.min()), int(xs.max())
        box = (x + x0, y + y0, x1 - x0 + 1, y1 - y0 + 1)
        k = int(local.sum())
        noise = rng.standard_normal((3, k), dtype=np.float32) * np.float32(OBJECT_NOISE_SD)
        np.clip(noise, -OBJECT_NOISE_MAX, OBJECT_NOISE_MAX, out=noise)
        region = img[:, y : y + s, x : x + s]
        region[:, local] = _COLOUR_ARRAY[colour][:, None] + noise
        objects.append(ShapeObject(colour=colour, shape=shape, box=box))

    # quantise to 8-bit levels so that to_pil() is lossless
    np.clip(img, 0.0, 1.0, out=img)
    img = np.round(img * 255.0) / np.float32(255.0)
    return Scene(
        seed=int(seed),
        size=size,
        image=torch.from_numpy(img.astype(np.float32, copy=False)),
        masks=torch.from_numpy(masks),
        objects=tuple(objects),
    )


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def phrase(colour: str, shape: str) -> str:
    """The caption phrase for one object: "a red circle", "an orange star"."""
    return f"{_article(colour)} {colour} {shape}"


def _build_caption(
    items: Sequence[tuple[str, str, int]], kind: str
) -> Caption:
    """items: (colour, shape, object_index or -1) in caption order."""
    text = ""
    spans: list[Span] = []
    n = len(items)
    for j, (colour, shape, idx) in enumerate(items):
        if j > 0:
            text += " and " if j == n - 1 else ", "
        text += _article(colour) + " "
        present = idx >= 0
        start = len(text)
        text += colour
        spans.append(Span(start, len(text), colour, "colour", idx, present))
        text += " "
        start = len(text)
        text += shape
        spans.append(Span(start, len(text), shape, "shape", idx, present))
    return Caption(
        text=text,
        kind=kind,
        objects=tuple(idx for _, _, idx in items if idx >= 0),
        absent=tuple((c, s) for c, s, idx in items if idx < 0),
        spans=tuple(spans),
    )


def _pick_absent(rng: np.random.Generator, scene: Scene, named: tuple[str, str], distractor: str):
    present = set(scene.pairs)
    candidates = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    if distractor == "disjoint":
        # Prefer a distractor sharing neither colour nor shape with anything in
        # the scene (always possible with <= 4 objects and the full
        # vocabulary), then one sharing no word with the named object.
        used_c = {c for c, _ in present}
        used_s = {s for _, s in present}
        tiers = [
            [(c, s) for c, s in candidates if c not in used_c and s not in used_s],
            [(c, s) for c, s in candidates if c != named[0] and s != named[1]],
            candidates,
        ]
        candidates = next(t for t in tiers if t)
    elif distractor != "any":
        raise ValueError(f"distractor must be 'disjoint' or 'any', got {distractor!r}")
    return candidates[int(rng.integers(len(candidates)))]


def make_caption(
    scene: Scene,
    kind: str = "subset",
    seed: int | None = None,
    *,
    distractor: str = "disjoint",
) -> Caption:
    """Caption ``scene``.  Deterministic: ``seed=None`` derives the seed from
    ``scene.seed`` and ``kind``.

    kinds: "single" (one present object), "subset" (one object with
    probability 0.6, else 2..n of them), "all" (every object, random order),
    "mixed" (one present object and one absent (colour, shape), random order).
    For "mixed", ``distractor="disjoint"`` (default) picks an absent object
    whose colour and shape both occur nowhere in the scene when possible;
    ``"any"`` picks any absent (colour, shape).
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"unknown caption kind {kind!r}; expected one of {KINDS}")
    if not scene.objects:
        raise ValueError("scene has no objects")
    if seed is None:
        rng = np.random.default_rng([int(scene.seed), _KIND_CODE[kind], 0x5EED])
    else:
        rng = np.random.default_rng(seed)
    n = len(scene.objects)
    objs = scene.objects

    if kind == "single" or kind == "mixed":
        chosen = [int(rng.integers(n))]
    elif kind == "all":
        chosen = [int(i) for i in rng.permutation(n)]
    else:  # subset
        k = 1 if (n == 1 or rng.random() < 0.6) else int(rng.integers(2, n + 1))
        chosen = [int(i) for i in rng.permutation(n)[:k]]

    items = [(objs[i].colour, objs[i].shape, i) for i in chosen]
    if kind == "mixed":
        c, s = _pick_absent(rng, scene, (items[0][0], items[0][1]), distractor)
        absent_item = (c, s, -1)
        items = [items[0], absent_item] if rng.random() < 0.5 else [absent_item, items[0]]
    return _build_caption(items, kind)


def caption_matches(caption: Caption, scene: Scene) -> bool:
    """True iff every (colour, shape) the caption names is present in scene."""
    return all(scene.has(c, s) for c, s in caption.named())


def class_prompts() -> list[tuple[str, str, str]]:
    """(colour, shape, prompt) for every colour x shape, canonical order.

    The prompt is :func:`phrase` (same wording as the captions, so "an orange
    circle" rather than "a orange circle")."""
    return [(c, s, phrase(c, s)) for c in COLOURS for s in SHAPES]


# --------------------------------------------------------------------------
# Splits and dataset
# --------------------------------------------------------------------------

_SEED_OFFSET = 1_000_000_007  # keeps dataset seeds away from small hand-picked seeds
_BASE_STRIDE = 1_000_000_000  # indices per base seed


def split_seed(split: str, index: int, base: int = 0) -> int:
    """Scene seed of item ``index`` of ``split``.

    ``seed - OFFSET`` is congruent to 0, 1, 2 (mod 3) for "train", "val",
    "test", so splits never share a seed, for any indices and bases.
    Different ``base`` values give disjoint seeds for indices < 10**9.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    index, base = int(index), int(base)
    if index < 0 or base < 0:
        raise ValueError("index and base must be non-negative")
    return _SEED_OFFSET + 3 * (base * _BASE_STRIDE + index) + SPLITS.index(split)


def collate_scenes(batch):
    """DataLoader ``collate_fn`` for :class:`ShapesDataset` items: returns
    (images [B, 3, H, W], list of scenes, list of captions)."""
    scenes = [s for s, _ in batch]
    captions = [c for _, c in batch]
    return torch.stack([s.image for s in scenes]), scenes, captions


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` (scene, caption) pairs; item ``i`` is rendered on the fly
    from ``split_seed(split, i, base_seed)``.  Use :func:`collate_scenes` as
    the DataLoader's ``collate_fn``."""

    def __init__(
        self,
        split: str = "train",
        length: int = 10_000,
        size: int = 96,
        caption_kind: str = "subset",
        n_objects: tuple[int, int] = (1, 4),
        base_seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if caption_kind not in _KIND_CODE:
            raise ValueError(f"unknown caption kind {caption_kind!r}; expected one of {KINDS}")
        if length < 0:
            raise ValueError("length must be non-negative")
        self.split = split
        self.length = int(length)
        self.size = int(size)
        self.caption_kind = caption_kind
        self.n_objects = (int(n_objects[0]), int(n_objects[1]))
        self.base_seed = int(base_seed)

    def __len__(self) -> int:
        return self.length

    def seed(self, i: int) -> int:
        return split_seed(self.split, i, self.base_seed)

    def __getitem__(self, i) -> tuple[Scene, Caption]:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for length {self.length}")
        scene = render_scene(self.seed(i), size=self.size, n_objects=self.n_objects)
        return scene, make_caption(scene, self.caption_kind)
