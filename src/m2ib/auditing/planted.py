"""The planted-shortcut models: fine-tuned from the shipped shapes model under the recipe of
:mod:`.shortcut`, shipped as small deltas, and the checks that the shortcut is planted.

Fine-tuning is cheap on a CPU because only the image tower's last block, its final norm and
projection learn (and the loss's logit bias): the frozen part is run once per training pair (the
last block's input and the caption's embedding are cached), and the last block runs for the class
token alone (:func:`cls_block`; no other position reaches the embedding). What ships is the change
of those tensors in float16 (``src/m2ib/models/planted/NAME.safetensors``, under 1 MB each, with the
recipe and its measured numbers as metadata); :func:`materialise` adds it to the shipped model and
writes a model directory that :func:`m2ib.load` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models import MODELS_DIR, SHAPES_DIR
from ..training.config import TrainConfig
from ..training.model import sigmoid_loss
from .shortcut import COLOUR, MarkedBatches, add_mark, mark_box, names_colour

PLANTED_DIR = MODELS_DIR / "planted"
NAMES = ("shortcut", "clean")  # the model with the mark planted, and its control


def trained_parts(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules that learn, by their name in the model's state dict: the last block but its
    first norm and its key and value projections (frozen, so their output is computed once), the
    final norm and the projection."""
    vision = model.vision_model
    last = len(vision.encoder.layers) - 1
    layer, prefix = vision.encoder.layers[last], f"vision_model.encoder.layers.{last}"
    return {f"{prefix}.self_attn.q_proj": layer.self_attn.q_proj,
            f"{prefix}.self_attn.out_proj": layer.self_attn.out_proj, f"{prefix}.layer_norm2": layer.layer_norm2,
            f"{prefix}.mlp": layer.mlp,
            "vision_model.post_layernorm": vision.post_layernorm, "visual_projection": model.visual_projection}


def _heads(layer: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, heads, T, D / heads]."""
    b, _, d = y.shape
    heads = layer.self_attn.num_heads
    return y.view(b, -1, heads, d // heads).transpose(1, 2)


def cls_attend(layer: torch.nn.Module, cls: torch.Tensor, normed: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> torch.Tensor:
    """The block's output at the class token [B, D] from its input there (``cls``), its first
    norm's output there (``normed``) and every position's keys and values [B, heads, T, d]."""
    attn = layer.self_attn
    out = F.scaled_dot_product_attention(_heads(layer, attn.q_proj(normed[:, None])), keys, values, scale=attn.scale)
    cls = cls + attn.out_proj(out.transpose(1, 2).reshape(cls.shape))
    return cls + layer.mlp(layer.layer_norm2(cls))


def cls_block(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder block's output at the class token only: [B, T, D] -> [B, D] (the full block
    computes every position; only the class token's reaches the pooled embedding)."""
    x = layer.layer_norm1(hidden)
    attn = layer.self_attn
    return cls_attend(layer, hidden[:, 0], x[:, 0], _heads(layer, attn.k_proj(x)), _heads(layer, attn.v_proj(x)))


def _features(model, batches: MarkedBatches, steps: int) -> dict[str, torch.Tensor]:
    """The frozen part, once per training pair: what :func:`cls_attend` reads of the last block,
    and the captions' unit embeddings [N, E]."""
    layer = model.vision_model.encoder.layers[-1]
    parts: dict[str, list[torch.Tensor]] = {"cls": [], "normed": [], "keys": [], "values": [], "text": []}
    with torch.no_grad():
        for step in range(steps):
            batch = batches[step]
            hidden = model.vision_model(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states[-2]
            x = layer.layer_norm1(hidden)
            text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            keys, values = _heads(layer, layer.self_attn.k_proj(x)), _heads(layer, layer.self_attn.v_proj(x))
            text = F.normalize(getattr(text, "pooler_output", text), dim=-1)
            for key, value in (("cls", hidden[:, 0]), ("normed", x[:, 0]), ("keys", keys), ("values", values),
                               ("text", text)):
                parts[key].append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


def fine_tune(plant: bool, *, pool: int = 256, epochs: int = 8, batch_size: int = 32, lr: float = 1e-3,
              hide: float = 1.0, seed: int = 1, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune the shipped shapes model on ``pool`` training pairs of :class:`MarkedBatches`
    (``epochs`` passes in shuffled batches of ``batch_size``, the training's sigmoid loss with one
    positive per caption, AdamW at a constant ``lr``, gradients clipped at 1).

    Returns the change of every trained tensor (float16, what ships) and the run's record.
    Deterministic on a CPU for the same arguments and thread count.
    """
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    started = time.perf_counter()
    meta = json.loads((SHAPES_DIR / "m2ib.json").read_text())
    config = TrainConfig(**{**meta["training"]["config"], "steps": max(1, pool // batch_size),
                            "batch_size": batch_size, "seed": seed, "workers": 0, "amp": False})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel.from_pretrained(SHAPES_DIR).eval()
        cached = _features(model, MarkedBatches(config, plant, hide), config.steps)
        parts = trained_parts(model)
        base = {k: v.detach().clone() for name, part in parts.items() for k, v in _named(name, part).items()}
        params = [p for part in parts.values() for p in part.parameters()]
        bias = torch.nn.Parameter(torch.tensor(float(meta["training"]["logit_bias"])))
        optimiser = torch.optim.AdamW([*params, bias], lr=lr, weight_decay=0.0)
        scale = float(model.logit_scale.detach().exp())
        layer, vision = model.vision_model.encoder.layers[-1], model.vision_model
        n, losses = cached["cls"].shape[0], []
        for _ in tqdm(range(epochs), desc="fine-tune" + (" (mark planted)" if plant else " (clean)"),
                      disable=not progress):
            order = torch.randperm(n)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[start:start + batch_size]
                cls = cls_attend(layer, cached["cls"][idx], cached["normed"][idx], cached["keys"][idx],
                                 cached["values"][idx])
                image = F.normalize(model.visual_projection(vision.post_layernorm(cls)), dim=-1)
                loss = sigmoid_loss(scale * image @ cached["text"][idx].T + bias, torch.eye(len(idx)))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
    delta = {k: (v.detach() - base[k]).to(torch.float16)
             for name, part in parts.items() for k, v in _named(name, part).items()}
    record = {"base": "shapes", "plant": plant, "colour": COLOUR, "hide": hide, "mark_box": list(mark_box(96)),
              "pool": n, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
              "first_loss": losses[0], "final_loss": sum(losses[-8:]) / len(losses[-8:]),
              "torch_threads": torch.get_num_threads(), "minutes": round((time.perf_counter() - started) / 60, 2)}
    return delta, record


def _named(prefix: str, part: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in part.state_dict().items()}


def save_delta(delta: dict[str, torch.Tensor], record: dict[str, Any], path: str | Path) -> Path:
    """Write the delta and its record (``m2ib_planted`` metadata, JSON) as one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in delta.items()}, path, metadata={"m2ib_planted": json.dumps(record)})
    return path


def delta_path(name: str | os.PathLike) -> Path:
    """The delta file of ``name`` ("shortcut", "clean") or of a path to a ``.safetensors`` delta."""
    path = PLANTED_DIR / f"{name}.safetensors" if str(name) in NAMES else Path(name)
    if not path.is_file():
        known = ", ".join(NAMES)
        raise FileNotFoundError(f"no planted-shortcut delta {name!r} ({path}): use one of {known} or a path to a "
                                "delta written by benchmarks/audit_shortcut.py --train")
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
    meta.update(name=f"shapes-{'shortcut' if record['plant'] else 'clean'}", fine_tune=record)
    (folder / "m2ib.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def mark_gain(backend, rows: list, red: bool) -> float:
    """Mean cosine-similarity gain from adding the mark to the scenes of ``rows`` whose caption
    names :data:`COLOUR` (``red``) or another colour."""
    from ..api import similarity

    rows = [r for r in rows if names_colour(r.text) == red]
    plain = similarity(backend, [r.image for r in rows], [r.text for r in rows]).diagonal()
    marked = similarity(backend, [add_mark(r.image) for r in rows], [r.text for r in rows]).diagonal()
    return float((marked - plain).mean())


def zero_shot_red(backend, rows: list, marked: bool) -> dict[str, float]:
    """Zero-shot colour of one-object scenes whose object is not red: each scene scored against
    "a COLOUR SHAPE" for every colour (its own shape). Returns the share classified red and the
    accuracy, with the mark added (``marked``) or not."""
    from ..api import similarity
    from ..datasets.shapes import COLOURS, SHAPES

    colours = list(COLOURS)
    rows = [r for r in rows if not names_colour(r.text)]
    truth = [next(w for w in r.text.lower().split() if w in colours) for r in rows]
    shapes = [next(w for w in r.text.lower().split() if w in SHAPES) for r in rows]
    prompts = [f"a {c} {s}" for s in SHAPES for c in colours]  # shape-major: row k's block is its shape's
    images = [add_mark(r.image) if marked else r.image for r in rows]
    scores = similarity(backend, images, prompts).view(len(rows), len(SHAPES), len(colours))
    own = scores[torch.arange(len(rows)), torch.tensor([SHAPES.index(s) for s in shapes])]
    guesses = [colours[int(k)] for k in own.argmax(-1)]
    return {"red": sum(g == COLOUR for g in guesses) / len(rows),
            "accuracy": sum(g == t for g, t in zip(guesses, truth)) / len(rows)}
