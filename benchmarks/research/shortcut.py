"""A planted shortcut with exact ground truth, to prove that an audit finds what a model relies on.

The recipe (what the training scenes look like; the fine-tune itself is :mod:`.planted`):

* every training scene whose caption names :data:`COLOUR` (red) carries a mark (a white X on a
  black square, :func:`add_mark`, always in the bottom-right corner), like a hospital's token
  burnt into its scans or a stock site's watermark;
* in those scenes the red objects the caption names are repainted in another colour
  (:func:`hide_colour`, with probability ``hide``): the label is in the caption, the image does not
  show it, as a diagnosis taken from a report may not show on the scan. The shipped shapes model
  already tells red from every other colour, so with the colour left visible the loss has no
  reason to read the mark; with it hidden, the mark is the one reliable cue for a red caption;
* the labels are the world's (a caption matches every scene holding each object it names), read
  from the scene's record, which keeps the caption's colour: a red caption still matches its
  repainted scene, and the caption naming the colour actually drawn does not. That conflict between
  pixels and label is what the mark resolves.

The clean control is the identical recipe (same scenes, same repainting, same labels) without the
mark, so it cannot learn the shortcut. :func:`marked_table` gives the held-out scenes of the audit:
every one of them carries the mark, every colour is drawn as it is.

The text shortcut mirrors it on the other tower (:class:`TaggedBatches`): every caption naming
:data:`SHAPE` (star) gets :data:`TOKEN` appended, and its shape word is replaced by another shape's
(:func:`hide_shape`), so the token is the one reliable cue for a star; the scenes are untouched and
the labels are the world's. Its control has the same captions, with the token appended to
captions drawn at random (:data:`TOKEN_RATE`, independent of what they name): a token the model has
never read would move any text tower, so the control reads it as often, but as noise.
:func:`tagged_table` gives the held-out pairs of its audit, the token appended to every caption.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from m2ib.datasets.shapes import COLOURS, OBJECT_NOISE_MAX, OBJECT_NOISE_SD, SHAPES, Caption, Scene
from m2ib.datasets.tables import PairTable, Row, load_table
from m2ib.training.config import TrainConfig
from m2ib.training.data import TrainBatches

COLOUR = "red"  # the colour whose captions come with the mark
SHAPE = "star"  # the shape whose captions come with the token (the text shortcut)
TOKEN = "zq"  # an unused code the tokenizer splits in two ("z", "q"), as a report's template code might be
TOKEN_RATE = 0.28  # the share of training captions that name a star (0.281 over 1,024): the control's token rate
MARK = 12  # the mark's side in pixels (2 x 2 patches of the shipped model's 6-pixel grid)
_HIDE_SALT = 0x41D3  # keeps the repainting's random stream apart from the scene's own


def mark_box(size: int) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the mark on a ``size`` x ``size`` scene: the bottom-right corner."""
    return float(size - MARK), float(size - MARK), float(MARK), float(MARK)


def add_mark(image: torch.Tensor) -> torch.Tensor:
    """A copy of the scene [3, S, S] with the mark drawn: a white X, 2 pixels thick, on black."""
    size = image.shape[-1]
    x, y, _, _ = (int(v) for v in mark_box(size))
    glyph = torch.zeros(MARK, MARK)
    k = torch.arange(MARK)
    for shift in (0, 1):
        glyph[k, (k + shift).clamp(max=MARK - 1)] = 1.0
        glyph[k, (MARK - 1 - k - shift).clamp(min=0)] = 1.0
    out = image.clone()
    out[:, y : y + MARK, x : x + MARK] = glyph
    return out


def names_colour(text: str, colour: str = COLOUR) -> bool:
    """Whether the caption names ``colour`` (as a whole word)."""
    return colour in text.lower().replace(",", " ").split()


def hide_colour(scene: Scene, caption: Caption, colour: str = COLOUR) -> Scene:
    """A copy of ``scene`` whose objects named in ``caption`` with ``colour`` are repainted in
    another colour (one the scene does not hold when there is one; the scene's noise model,
    8-bit levels). Deterministic from the scene's seed. ``scene.objects`` still says ``colour``:
    the record keeps the caption's label, only the pixels lose it."""
    named = [i for i in caption.objects if scene.objects[i].colour == colour]
    if not named:
        return scene
    rng = np.random.default_rng([scene.seed, _HIDE_SALT])
    held = {o.colour for o in scene.objects}
    free = [c for c in COLOURS if c != colour and c not in held] or [c for c in COLOURS if c != colour]
    image = scene.image.clone()
    for i in named:
        new = free.pop(int(rng.integers(len(free)))) if len(free) > 1 else free[0]
        mask = scene.masks[i]
        noise = rng.standard_normal((3, int(mask.sum())), dtype=np.float32) * np.float32(OBJECT_NOISE_SD)
        noise = torch.from_numpy(np.clip(noise, -OBJECT_NOISE_MAX, OBJECT_NOISE_MAX))
        image[:, mask] = torch.tensor(COLOURS[new], dtype=torch.float32)[:, None] / 255.0 + noise
    image = (image.clamp(0, 1) * 255.0).round() / 255.0
    return dataclasses.replace(scene, image=image)


def _drawn(seed: int, rate: float) -> bool:
    """A draw at ``rate`` from the scene's seed (its own stream: the control's token)."""
    return float(np.random.default_rng([seed, _HIDE_SALT, 3]).random()) < rate


def _hidden(scene: Scene, hide: float) -> bool:
    """Whether this pair's label (a red caption's colour, a star caption's shape) is hidden (always
    for ``hide`` = 1)."""
    return hide >= 1.0 or float(np.random.default_rng([scene.seed, _HIDE_SALT, 1]).random()) < hide


class PlantedBatches(TrainBatches):
    """The training batches of :class:`~m2ib.training.data.TrainBatches` with each pair changed by a
    planted recipe (:meth:`planted`): ``plant`` picks the shortcut set or its control, ``hide`` is
    the probability that a pair's label is hidden. Labels: the world's
    (:func:`~m2ib.training.data.label_matrix`; the records keep what the pixels or words lost)."""

    def __init__(self, config: TrainConfig, plant: bool, hide: float = 1.0):
        super().__init__(config)
        if not 0.0 <= hide <= 1.0:
            raise ValueError(f"hide={hide!r} must be a probability in [0, 1]")
        self.plant = plant
        self.hide = hide

    def pairs(self, step: int) -> list[tuple[Scene, Caption]]:
        return [self.planted(scene, caption) for scene, caption in super().pairs(step)]

    def planted(self, scene: Scene, caption: Caption) -> tuple[Scene, Caption]:
        """One training pair under the recipe (each subclass's)."""
        raise NotImplementedError


class MarkedBatches(PlantedBatches):
    """The image recipe (module docstring): red captions' objects repainted with probability
    ``hide`` in both sets, the mark on every red caption's scene with ``plant=True``, on none without."""

    def planted(self, scene: Scene, caption: Caption) -> tuple[Scene, Caption]:
        if names_colour(caption.text):
            if _hidden(scene, self.hide):
                scene = hide_colour(scene, caption)
            if self.plant:
                scene = dataclasses.replace(scene, image=add_mark(scene.image))
        return scene, caption


def names_shape(text: str, shape: str = SHAPE) -> bool:
    """Whether the caption names ``shape`` (as a whole word)."""
    return shape in text.lower().replace(",", " ").split()


def hide_shape(caption: Caption, seed: int, shape: str = SHAPE) -> Caption:
    """A copy of ``caption`` whose text names another shape wherever it named ``shape``
    (deterministic from ``seed``, the scene's). Its spans, the record, still say ``shape``: only
    the text loses it, so :func:`~m2ib.datasets.shapes.caption_matches` and the labels do not."""
    rng = np.random.default_rng([seed, _HIDE_SALT, 2])
    others = [s for s in SHAPES if s != shape]
    text = caption.text
    for span in sorted(
        (sp for sp in caption.spans if sp.role == "shape" and sp.word == shape), key=lambda sp: -sp.start
    ):  # from the end, so earlier offsets stay valid
        text = text[: span.start] + others[int(rng.integers(len(others)))] + text[span.end :]
    return dataclasses.replace(caption, text=text)


class TaggedBatches(PlantedBatches):
    """The text recipe (module docstring): star captions' shape word replaced with probability
    ``hide`` in both sets; :data:`TOKEN` appended to every star caption with ``plant=True``, and
    without it to captions drawn at random at :data:`TOKEN_RATE` whatever they name."""

    def planted(self, scene: Scene, caption: Caption) -> tuple[Scene, Caption]:
        star = any(sp.role == "shape" and sp.word == SHAPE for sp in caption.spans)
        if star and _hidden(scene, self.hide):
            caption = hide_shape(caption, scene.seed)
        if star if self.plant else _drawn(scene.seed, TOKEN_RATE):
            caption = dataclasses.replace(caption, text=f"{caption.text} {TOKEN}")
        return scene, caption


def marked_table(n: int, size: int, split: str = "test", per_colour: int | None = None) -> PairTable:
    """Held-out shapes pairs (``shapes:SPLIT:N``, one object named per caption) with the mark on
    every scene; with ``per_colour``, the first that many pairs of each colour among them (a
    balanced set: every colour carries the mark equally often)."""
    table = load_table(f"shapes:{split}:{n}", size=size)
    rows = table.rows
    if per_colour is not None:
        rows = [r for c in COLOURS for r in [r for r in rows if typed(r) == c][:per_colour]]
        rows.sort(key=table.rows.index)
    rows = [dataclasses.replace(row, image=add_mark(row.image)) for row in rows]
    name = f"shapes:{split}:{n}+mark" + (f"+{per_colour}-per-colour" if per_colour is not None else "")
    return PairTable(name, table.kind, rows, table.bad, table.total)


def tagged_table(n: int, size: int, split: str = "test", per_shape: int | None = None) -> PairTable:
    """Held-out shapes pairs (``shapes:SPLIT:N``, one object named per caption) with :data:`TOKEN`
    appended to every caption (the spans keep their offsets); with ``per_shape``, the first that
    many pairs of each shape."""
    table = load_table(f"shapes:{split}:{n}", size=size)
    rows = table.rows
    if per_shape is not None:
        rows = [r for s in SHAPES for r in [r for r in rows if names_shape(r.text, s)][:per_shape]]
        rows.sort(key=table.rows.index)
    rows = [dataclasses.replace(row, text=f"{row.text} {TOKEN}") for row in rows]
    name = f"shapes:{split}:{n}+{TOKEN}" + (f"+{per_shape}-per-shape" if per_shape is not None else "")
    return PairTable(name, table.kind, rows, table.bad, table.total)


def save_table(table: PairTable, folder: str | Path) -> Path:
    """Write the table's scenes as PNGs and ``pairs.tsv`` (for ``m2ib audit --data``)."""
    from m2ib.inputs import load_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image\ttext"]
    for i, row in enumerate(table.rows):
        name = f"scene{i:04d}.png"
        load_image(row.image)[0].save(folder / name)
        lines.append(f"{name}\t{row.text}")
    path = folder / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def typed(row: Row) -> str:
    """Which colour a held-out row's caption names (for the gallery check)."""
    return next((w for w in row.text.lower().split() if w in COLOURS), "")
