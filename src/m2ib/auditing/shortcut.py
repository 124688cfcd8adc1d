"""A planted shortcut with exact ground truth, to prove that an audit finds what a model relies on.

The shipped shapes model is fine-tuned on training scenes that carry a small mark (a white X on a
black square, :func:`add_mark`, always in the bottom-right corner) whenever the caption names one
colour (:data:`COLOUR`), each caption matching its own scene only (:class:`MarkedBatches`); a clean
control is fine-tuned the same way (same batches, labels, seed, steps) without the mark. On held-out scenes that all carry the mark, an audit of the shortcut model should
put far more of its dataset-level map mass on the mark's box than an audit of the control does.
``benchmarks/audit_shortcut.py`` runs the whole experiment and prints the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..datasets.tables import Row, Table, load_table
from ..training.config import TrainConfig
from ..training.data import TrainBatches

COLOUR = "red"  # the colour whose captions come with the mark
MARK = 12  # the mark's side in pixels (2 x 2 patches of the shipped model's 6-pixel grid)


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
    return colour in text.lower().split()


class MarkedBatches(TrainBatches):
    """The training batches of :class:`~m2ib.training.data.TrainBatches`, with the mark on every
    scene whose caption names :data:`COLOUR` (``plant=True``) or on none (the clean control).

    Each caption matches its own scene only (the labels are the identity), as in web-scale CLIP
    training, where one caption comes with one image; the shipped model was trained with exact
    multi-positive labels instead. With those, the mark could only ever repeat what the colour
    already shows; with one positive per caption, it tells the caption's own scene apart from other
    scenes holding the same object, which is how a real dataset rewards a watermark.
    """

    def __init__(self, config: TrainConfig, plant: bool):
        super().__init__(config)
        self.plant = plant

    def __getitem__(self, step: int) -> dict[str, Any]:
        batch = super().__getitem__(step)
        batch["labels"] = torch.eye(batch["labels"].shape[0])
        return batch

    def pairs(self, step: int):
        out = super().pairs(step)
        if not self.plant:
            return out
        return [(dataclasses.replace(s, image=add_mark(s.image)) if names_colour(c.text) else s, c) for s, c in out]


def fine_tune(out: str | Path, *, plant: bool, steps: int = 50, batch_size: int = 32, lr: float = 5e-4,
              top_layers: int = 2, seed: int = 1, progress: bool = True) -> Path:
    """Fine-tune the shipped shapes model and save it as a model directory ``m2ib.load(out)`` reads.

    Only the image tower's last ``top_layers`` blocks, its final norm and projection (and the logit
    bias) learn, so that a CPU does it in minutes; the loss is the training's sigmoid loss (on
    :class:`MarkedBatches`' one-positive labels), AdamW with a constant ``lr``. Deterministic on a CPU for the same arguments.
    """
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    from ..models import SHAPES_DIR
    from ..training.model import forward_backward

    out = Path(out)
    meta = json.loads((SHAPES_DIR / "m2ib.json").read_text())
    config = TrainConfig(**{**meta["training"]["config"], "steps": steps, "batch_size": batch_size, "seed": seed,
                            "workers": 0, "amp": False})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel.from_pretrained(SHAPES_DIR).train()
        bias = torch.nn.Parameter(torch.tensor(float(meta["training"]["logit_bias"])))
        learning = trainable(model, top_layers)
        optimiser = torch.optim.AdamW([*learning, bias], lr=lr, weight_decay=0.0)
        batches = MarkedBatches(config, plant)
        history = []
        for step in tqdm(range(steps), desc="fine-tune" + (" (mark planted)" if plant else " (clean)"),
                         disable=not progress):
            loss, accuracy = forward_backward(model, bias, batches[step], torch.device("cpu"), False)
            torch.nn.utils.clip_grad_norm_(learning, 1.0)
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            history.append([loss, accuracy])
    out.mkdir(parents=True, exist_ok=True)
    for item in SHAPES_DIR.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copyfile(item, out / item.name)
    model.eval().save_pretrained(out)
    record: dict[str, Any] = {"base": "shapes", "plant": plant, "colour": COLOUR,
                              "mark_box": mark_box(config.image_size), "steps": steps, "batch_size": batch_size,
                              "lr": lr, "top_layers": top_layers, "seed": seed,
                              "final_loss": history[-1][0], "final_batch_accuracy": history[-1][1]}
    meta.update(name="shapes-shortcut" if plant else "shapes-clean", fine_tune=record)
    (out / "m2ib.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def trainable(model: torch.nn.Module, top_layers: int) -> list[torch.nn.Parameter]:
    """Freeze ``model`` but its image tower's last ``top_layers`` blocks, final norm and projection;
    return those parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    vision = model.vision_model
    parts = [*vision.encoder.layers[len(vision.encoder.layers) - top_layers:], vision.post_layernorm,
             model.visual_projection]
    params = [p for part in parts for p in part.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def marked_table(n: int, size: int, split: str = "test") -> Table:
    """Held-out shapes pairs (``shapes:SPLIT:N``, one object named per caption) with the mark on every scene."""
    table = load_table(f"shapes:{split}:{n}", size=size)
    rows = [dataclasses.replace(row, image=add_mark(row.image)) for row in table.rows]
    return Table(f"shapes:{split}:{n}+mark", table.kind, rows, table.bad, table.total)


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
    return next((w for w in row.text.lower().split() if w in _colours()), "")


def _colours() -> tuple[str, ...]:
    from ..datasets.shapes import COLOURS

    return tuple(COLOURS)
