"""Rendering one scene: object layout, the textured background, the painted objects.

Only a ``numpy.random.default_rng`` made from the scene's seed is used, never global random state.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch

from .geometry import _cached_mask
from .world import (
    _BACKGROUND_MAX_CHROMA,
    BORDER,
    COLOURS,
    OBJECT_GAP,
    OBJECT_NOISE_MAX,
    OBJECT_NOISE_SD,
    SHAPES,
    SIZE_FRACTION,
    Scene,
    ShapeObject,
)

_COLOUR_ARRAY = {k: np.asarray(v, dtype=np.float32) / 255.0 for k, v in COLOURS.items()}


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
    masks, objects = _paint_objects(rng, img, chosen, placed)
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


def _paint_objects(
    rng: np.random.Generator, img: np.ndarray, chosen: list[tuple[str, str]], placed: list[tuple[int, int, int]]
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Paint each (colour, shape) at its (x, y, side) slot into ``img`` in place, with clipped
    noise: the exact masks [n, size, size] and the objects with their tight boxes."""
    size = img.shape[1]
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
    return masks, objects
