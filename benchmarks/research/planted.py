"""The planted-shortcut models: fine-tuned from the shipped shapes model under the recipes of
:mod:`.shortcut`, shipped as small deltas, and the checks that each shortcut is planted.

The fine-tune trains one whole tower (embeddings, blocks, norms and projection) and the loss's
logit bias, with the other tower frozen (run without gradients): the image tower for the mark, the
text tower for the token. It runs on fresh training batches each step: every pair is seen once, so
the model cannot memorise its way to the hidden label and has to find a cue. What ships is the
change of the trained tower in float16 (``benchmarks/research/planted/NAME.safetensors``, with the
recipe and its measured numbers as metadata); :func:`materialise` adds it to the shipped model and
writes a model directory that :func:`m2ib.load` reads.

Rounds that did not plant the mark (kept here as what not to repeat): identity labels (each caption
matches its own scene only) let the loss spend itself on captions that name what other scenes hold;
training only the last block at the class token, on cached features, fitted the red captions as
well without the mark as with it (the control learnt the same curve to three decimals).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from m2ib.models import SHAPES_DIR
from m2ib.training.config import TrainConfig
from m2ib.training.model import sigmoid_loss, unit_features

from .shortcut import COLOUR, SHAPE, TOKEN, MarkedBatches, TaggedBatches, add_mark, mark_box, names_colour, names_shape

PLANTED_DIR = Path(__file__).parent / "planted"
#: The mark planted in the image tower and its control; the token planted in the text tower and its control.
NAMES = ("shortcut", "clean", "text-shortcut", "text-clean")


def trained_parts(model: torch.nn.Module, tower: str = "image") -> dict[str, torch.nn.Module]:
    """The modules that learn, by their name in the model's state dict: the ``tower``'s."""
    if tower == "image":
        return {"vision_model": model.vision_model, "visual_projection": model.visual_projection}
    if tower == "text":
        return {"text_model": model.text_model, "text_projection": model.text_projection}
    raise ValueError(f"tower={tower!r}: use 'image' (the mark) or 'text' (the token)")


def fine_tune(
    plant: bool,
    *,
    tower: str = "image",
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-4,
    hide: float = 1.0,
    seed: int = 1,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune one tower of the shipped shapes model for ``steps`` batches of ``batch_size``
    fresh training pairs (the training's sigmoid loss and labels, AdamW at a constant ``lr``,
    gradients clipped at 1), the other tower frozen: the image tower on :class:`MarkedBatches`
    (the mark), or the text tower on :class:`TaggedBatches` (the token).

    Returns the change of every trained tensor (float16, what ships) and the run's record.
    Deterministic on a CPU for the same arguments and thread count.
    """
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    started = time.perf_counter()
    meta = json.loads((SHAPES_DIR / "m2ib.json").read_text())
    config = TrainConfig(
        **{
            **meta["training"]["config"],
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "workers": 0,
            "amp": False,
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel.from_pretrained(SHAPES_DIR).eval()  # eval: no dropout; gradients still flow
        parts = trained_parts(model, tower)
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for part in parts.values() for p in part.parameters()]
        for p in params:
            p.requires_grad_(True)
        base = {k: v.detach().clone() for name, part in parts.items() for k, v in _named(name, part).items()}
        bias = torch.nn.Parameter(torch.tensor(float(meta["training"]["logit_bias"])))
        optimiser = torch.optim.AdamW([*params, bias], lr=lr, weight_decay=0.0)
        scale = float(model.logit_scale.detach().exp())
        batches, losses = (MarkedBatches if tower == "image" else TaggedBatches)(config, plant, hide), []
        planted = "mark" if tower == "image" else "token"
        for step in tqdm(
            range(steps),
            desc=f"fine-tune {tower} tower" + (f" ({planted} planted)" if plant else " (clean)"),
            disable=not progress,
        ):
            batch = batches[step]
            with torch.set_grad_enabled(tower == "text"):
                text = unit_features(
                    model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                )
            with torch.set_grad_enabled(tower == "image"):
                image = unit_features(model.get_image_features(pixel_values=batch["pixel_values"]))
            loss = sigmoid_loss(scale * image @ text.T + bias, batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    delta = {
        k: (v.detach() - base[k]).to(torch.float16)
        for name, part in parts.items()
        for k, v in _named(name, part).items()
    }
    last = losses[-25:]
    cue = {"colour": COLOUR, "mark_box": list(mark_box(96))} if tower == "image" else {"shape": SHAPE, "token": TOKEN}
    record = {
        "base": "shapes",
        "plant": plant,
        "tower": tower,
        **cue,
        "hide": hide,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "first_loss": losses[0],
        "final_loss": sum(last) / len(last),
        "torch_threads": torch.get_num_threads(),
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    return delta, record


def _named(prefix: str, part: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The part's parameters by their name in the model's state dict (buffers, e.g. position ids, never change)."""
    return {f"{prefix}.{k}": v for k, v in part.named_parameters()}


def save_delta(delta: dict[str, torch.Tensor], record: dict[str, Any], path: str | Path) -> Path:
    """Write the delta and its record (``m2ib_planted`` metadata, JSON) as one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in delta.items()}, path, metadata={"m2ib_planted": json.dumps(record)})
    return path


def delta_path(name: str | os.PathLike) -> Path:
    """The delta file of ``name`` (one of :data:`NAMES`) or of a path to a ``.safetensors`` delta."""
    path = PLANTED_DIR / f"{name}.safetensors" if str(name) in NAMES else Path(name)
    if not path.is_file():
        known = ", ".join(NAMES)
        raise FileNotFoundError(
            f"no planted-shortcut delta {name!r} ({path}): use one of {known} or a path to a "
            "delta written by benchmarks/audit_shortcut.py --train"
        )
    return path


def read_record(name: str | os.PathLike) -> dict[str, Any]:
    """The record stored with a delta (the recipe, its settings and its measured numbers)."""
    from safetensors import safe_open

    with safe_open(delta_path(name), "pt") as f:
        return json.loads(f.metadata()["m2ib_planted"])


def materialise(name: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the shipped shapes model plus the delta ``name`` as a model directory in ``folder``
    (config, tokenizer, ``m2ib.json`` settings; the record under ``m2ib.json``'s ``fine_tune``)."""
    from safetensors.torch import load_file, save_file

    source, folder = delta_path(name), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = load_file(SHAPES_DIR / "model.safetensors")
    for key, change in load_file(source).items():
        if key not in weights:
            raise KeyError(f"delta {source} changes {key!r}, which the shipped shapes model does not have")
        weights[key] = weights[key] + change.to(weights[key].dtype)
    for item in SHAPES_DIR.iterdir():
        if item.is_file() and item.name not in ("model.safetensors", "m2ib.json"):
            shutil.copyfile(item, folder / item.name)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    meta = json.loads((SHAPES_DIR / "m2ib.json").read_text())
    record = read_record(source)
    kind = ("" if record["tower"] == "image" else "text-") + ("shortcut" if record["plant"] else "clean")
    meta.update(name=f"shapes-{kind}", fine_tune=record)
    (folder / "m2ib.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def cue_gain(backend, rows: list, named: bool, tower: str = "image") -> float:
    """Mean cosine-similarity gain from adding the cue to the pairs of ``rows`` whose caption names
    the cue's label (``named``) or not: the mark on the scene (``tower="image"``; label
    :data:`COLOUR`) or :data:`TOKEN` after the caption (``"text"``; label :data:`SHAPE`)."""
    from m2ib.api import similarity

    rows = [r for r in rows if _names_label(r.text, tower) == named]
    images, texts = [r.image for r in rows], [r.text for r in rows]
    plain = similarity(backend, images, texts).diagonal()
    cued = similarity(backend, *_cued(images, texts, tower)).diagonal()
    return float((cued - plain).mean())


def zero_shot(backend, rows: list, cued: bool, tower: str = "image") -> dict[str, float]:
    """Whether the cue makes the model call other classes by its label, on the one-object pairs of
    ``rows`` whose caption does not name the label.

    ``tower="image"``: each scene, with the mark added when ``cued``, is classified among "a C S"
    for every colour C (S its own shape). ``"text"``: each caption, with the token appended when
    ``cued``, retrieves one of five one-object scenes of its colour, one per shape. Returns the
    share given the cue's label (:data:`COLOUR` red, :data:`SHAPE` star) and the accuracy."""
    from m2ib.api import similarity
    from m2ib.datasets.shapes import COLOURS, SHAPES, phrase, render_scene

    rows = [r for r in rows if not _names_label(r.text, tower)]
    words = [r.text.lower().split() for r in rows]
    truth = [(next(w for w in ws if w in COLOURS), next(w for w in ws if w in SHAPES)) for ws in words]
    guesses = []
    for k, (row, (colour, shape)) in enumerate(zip(rows, truth)):
        if tower == "image":
            options = list(COLOURS)
            scores = similarity(
                backend, [add_mark(row.image) if cued else row.image], [phrase(c, shape) for c in options]
            )[0]
        else:
            options = list(SHAPES)
            gallery = [render_scene(k, n_objects=(1, 1), colours=[colour], shapes=[s]).image for s in options]
            scores = similarity(backend, gallery, [f"{row.text} {TOKEN}" if cued else row.text])[:, 0]
        guesses.append(options[int(scores.argmax())])
    label, answers = (COLOUR, [c for c, _ in truth]) if tower == "image" else (SHAPE, [s for _, s in truth])
    return {
        label: sum(g == label for g in guesses) / len(rows),
        "accuracy": sum(g == t for g, t in zip(guesses, answers)) / len(rows),
    }


def _names_label(text: str, tower: str) -> bool:
    return names_colour(text) if tower == "image" else names_shape(text)


def _cued(images: list, texts: list[str], tower: str) -> tuple[list, list[str]]:
    """The images with the mark, or the texts with the token."""
    if tower == "image":
        return [add_mark(image) for image in images], texts
    return images, [f"{text} {TOKEN}" for text in texts]
