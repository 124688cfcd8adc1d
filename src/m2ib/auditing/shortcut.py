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
* each caption matches its own scene only (the labels are the identity), as in web-scale CLIP
  training, where one caption comes with one image.

The clean control is the identical recipe (same scenes, same repainting, same labels) without the
mark, so it cannot learn the shortcut. :func:`marked_table` gives the held-out scenes of the audit:
every one of them carries the mark, every colour is drawn as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.shapes import COLOURS, OBJECT_NOISE_MAX, OBJECT_NOISE_SD, Caption, Scene
from ..datasets.tables import Row, Table, load_table
from ..training.config import TrainConfig
from ..training.data import TrainBatches

COLOUR = "red"  # the colour whose captions come with the mark
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
    out[:, y:y + MARK, x:x + MARK] = glyph
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


def _hidden(scene: Scene, hide: float) -> bool:
    """Whether this red-caption scene's colour is hidden (always for ``hide`` = 1)."""
    return hide >= 1.0 or float(np.random.default_rng([scene.seed, _HIDE_SALT, 1]).random()) < hide


class MarkedBatches(TrainBatches):
    """The training batches of :class:`~m2ib.training.data.TrainBatches` under the planted recipe
    (module docstring): red captions' objects repainted with probability ``hide`` in both sets, the
    mark on every red caption's scene with ``plant=True``, on none without. Labels: the identity."""

    def __init__(self, config: TrainConfig, plant: bool, hide: float = 1.0):
        super().__init__(config)
        if not 0.0 <= hide <= 1.0:
            raise ValueError(f"hide={hide!r} must be a probability in [0, 1]")
        self.plant = plant
        self.hide = hide

    def __getitem__(self, step: int) -> dict[str, Any]:
        batch = super().__getitem__(step)
        batch["labels"] = torch.eye(batch["labels"].shape[0])
        return batch

    def pairs(self, step: int) -> list[tuple[Scene, Caption]]:
        out = []
        for scene, caption in super().pairs(step):
            if names_colour(caption.text):
                if _hidden(scene, self.hide):
                    scene = hide_colour(scene, caption)
                if self.plant:
                    scene = dataclasses.replace(scene, image=add_mark(scene.image))
            out.append((scene, caption))
        return out


def marked_table(n: int, size: int, split: str = "test", per_colour: int | None = None) -> Table:
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
    return Table(name, table.kind, rows, table.bad, table.total)


def save_table(table: Table, folder: str | Path) -> Path:
    """Write the table's scenes as PNGs and ``pairs.tsv`` (for ``m2ib audit --data``)."""
    from ..inputs import load_image

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
