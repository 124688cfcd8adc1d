"""The finished model directory: weights, tokenizer, preprocessing config and ``m2ib.json``, as ``m2ib.load`` reads it."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..fileio import atomic_write_text
from ..tokenizer import save_word_tokenizer
from .config import config_dict
from .data import IMAGE_MEAN, IMAGE_STD, WORDS
from .state import RunState

if TYPE_CHECKING:
    from transformers import CLIPModel


def export_model(run: RunState, out_dir: Path, dev: torch.device, amp: bool, command: str | None) -> None:
    """Write the model files of a finished ``run`` into ``out_dir``, keeping the ``recommended``
    settings of an ``m2ib.json`` already there."""
    _save_model(run.model, out_dir)
    save_word_tokenizer(WORDS, out_dir)
    write_json(out_dir / "preprocessor_config.json", preprocessor_config(run.config.image_size))
    meta_path = out_dir / "m2ib.json"
    recommended = _recommended(meta_path)
    meta = {"name": "shapes", "training": training_record(run, dev, amp, command), "recommended": recommended}
    write_json(meta_path, meta)


def training_record(run: RunState, dev: torch.device, amp: bool, command: str | None) -> dict[str, Any]:
    """``m2ib.json``'s ``training`` entry: how the model was made and how its training went."""
    from transformers import __version__ as transformers_version

    history, steps = run.history, run.config.steps
    tail = history[-50:]
    every = max(1, steps // 20)
    return {
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "config": config_dict(run.config),
        "steps": run.step,
        "wall_seconds": round(run.wall, 2),
        "device": device_name(dev),
        "amp_bf16": amp,
        "torch": torch.__version__,
        "transformers": transformers_version,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "final_loss": history[-1][0] if history else None,
        "final_batch_accuracy": history[-1][1] if history else None,
        "mean_loss_last_50": sum(h[0] for h in tail) / len(tail) if tail else None,
        "mean_batch_accuracy_last_50": sum(h[1] for h in tail) / len(tail) if tail else None,
        "loss_curve": {
            str(k + every): round(sum(h[0] for h in history[k : k + every]) / len(history[k : k + every]), 5)
            for k in range(0, len(history), every)
        },
        "logit_scale": float(run.model.logit_scale.detach().exp()),
        "logit_bias": float(run.logit_bias.detach()),
    }


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """A CLIPImageProcessor config reproducing training's preprocessing for a [S, S] scene image."""
    return {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "resample": 3,
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }


def device_name(dev: torch.device) -> str:
    """The device as recorded in ``m2ib.json``: ``cpu`` or ``cuda (<GPU name>)``."""
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _recommended(meta_path: Path) -> dict:
    """The ``recommended`` settings of an existing ``m2ib.json`` (a settings search wrote them), or {}."""
    if not meta_path.exists():
        return {}
    try:
        return json.loads(meta_path.read_text()).get("recommended", {}) or {}
    except (json.JSONDecodeError, AttributeError):
        return {}


def _save_model(model: CLIPModel, out_dir: Path) -> None:
    model.eval()
    model.save_pretrained(out_dir)  # safetensors (the default of every supported transformers)
    if not (out_dir / "model.safetensors").exists():
        raise RuntimeError(f"save_pretrained wrote no {out_dir / 'model.safetensors'}")
