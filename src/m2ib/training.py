"""Train a small ``transformers`` CLIPModel on the shapes world, for m2ib to explain.

    python -m m2ib.training --out models/shapes --device cuda     # the default config
    python -m m2ib.training --out /tmp/shapes-quick --quick       # a tiny run: seconds on a CPU

The loss is the pairwise sigmoid loss of SigLIP with *exact* multi-positive labels: the
pair (image i, caption j) is positive iff every object caption j names is in scene i
(:func:`~m2ib.datasets.shapes.caption_matches`), not only on the diagonal. The temperature
is CLIPModel's ``logit_scale``; a learnable logit bias lives beside the model (in the
checkpoint, not in the exported model: inference does not need it).

Batch ``k`` is a pure function of ``(config.seed, k)``: item ``j`` is scene
``split_seed("train", k * batch_size + j, base=seed)`` with its ``make_caption`` caption.
So a run resumed from ``out_dir/checkpoint.pt`` sees exactly the data (and, on a CPU, reaches
exactly the weights) of an uninterrupted one. The finished directory holds
``model.safetensors`` + ``config.json``, the tokenizer files, ``preprocessor_config.json``
and ``m2ib.json``; ``m2ib.load(out_dir)`` reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .datasets.shapes import (COLOURS, KINDS, SHAPES, Caption, Scene, caption_matches, make_caption, render_scene,
                              split_seed)
from .errors import InputError, M2IBError
from .fileio import atomic_write, atomic_write_text
from .tokenizer import build_word_tokenizer, save_word_tokenizer

__all__ = ["TrainConfig", "QUICK", "WORDS", "TrainBatches", "label_matrix", "sigmoid_loss", "batch_accuracy",
           "build_model", "train", "main"]

#: Single-token words of the model's tokenizer (anything else still tokenizes, letter by letter).
WORDS: tuple[str, ...] = (*COLOURS, *SHAPES, "a", "an", "and", "the", "of", "photo", "with")
#: Images are [0, 1] floats normalised to [-1, 1].
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
CHECKPOINT = "checkpoint.pt"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on the learnt temperature
# Fields that do not change what is computed: a checkpoint made with other values resumes.
_RESUME_FREE = ("workers", "checkpoint_every")
EXIT_UNFINISHED = 3  # main(): stopped early (--stop-after / --time-limit), checkpoint kept


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (``device`` aside)."""

    image_size: int = 96  # input resolution in pixels; scenes are rendered at this size
    patch_size: int = 6  # ViT patch side in pixels (96 / 6: a 16x16 patch grid)
    vision_width: int = 192  # hidden size of the image tower
    vision_layers: int = 6  # transformer blocks in the image tower
    vision_heads: int = 6  # attention heads in the image tower
    text_width: int = 128  # hidden size of the text tower
    text_layers: int = 4  # transformer blocks in the text tower
    text_heads: int = 4  # attention heads in the text tower
    embed_dim: int = 128  # size of the joint image-text embedding
    context_length: int = 32  # most text tokens, start/end included (captions are short)
    steps: int = 2000  # optimiser steps
    batch_size: int = 256  # image-caption pairs per step (the loss compares all B x B pairs)
    lr: float = 1e-3  # peak learning rate of AdamW
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr, then cosine decay to 0
    weight_decay: float = 0.1  # AdamW decoupled weight decay, on weight matrices only
    beta2: float = 0.98  # AdamW's second-moment decay (beta1 is 0.9)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    logit_scale_init: float = math.log(10.0)  # initial log temperature (CLIPModel.logit_scale)
    logit_bias_init: float = -10.0  # initial logit bias of the sigmoid loss
    caption_kind: str = "subset"  # make_caption kind of the training captions
    n_objects: tuple[int, int] = (1, 4)  # inclusive range of objects per training scene
    seed: int = 0  # model initialisation and the data (base seed of split_seed)
    workers: int = 2  # DataLoader worker processes generating batches (0: in the main process)
    checkpoint_every: int = 100  # write out_dir/checkpoint.pt every this many steps
    amp: bool | None = None  # bf16 autocast; None: on for CUDA, off elsewhere

    def __post_init__(self) -> None:
        ints = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "text_width",
                "text_layers", "text_heads", "embed_dim", "context_length", "steps", "batch_size",
                "checkpoint_every")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"{name}={value!r} must be a positive integer")
        if self.image_size < 64:
            raise InputError(f"image_size={self.image_size} must be at least 64 (the shapes world's smallest)")
        if self.image_size % self.patch_size:
            raise InputError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise InputError(f"{width}={getattr(self, width)} must be a multiple of "
                                 f"{heads}={getattr(self, heads)}")
        if self.context_length < 4:
            raise InputError(f"context_length={self.context_length} is too short for a caption")
        if self.caption_kind not in KINDS:
            raise InputError(f"caption_kind={self.caption_kind!r}: use one of {', '.join(KINDS)}")
        lo, hi = self.n_objects
        if not 1 <= lo <= hi:
            raise InputError(f"n_objects={self.n_objects!r} must satisfy 1 <= low <= high")
        object.__setattr__(self, "n_objects", (int(lo), int(hi)))  # lists (from JSON) -> a tuple
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.beta2 < 1:
            raise InputError("lr must be > 0, weight_decay and grad_clip >= 0, beta2 in [0, 1)")
        if self.warmup_steps < 0 or self.workers < 0 or self.seed < 0:
            raise InputError("warmup_steps, workers and seed must be non-negative")


#: A tiny configuration: a complete run in seconds on a CPU (tests, smoke runs).
QUICK = TrainConfig(image_size=64, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2, text_width=32,
                    text_layers=2, text_heads=2, embed_dim=32, steps=30, batch_size=32, warmup_steps=5,
                    workers=0, checkpoint_every=10)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def label_matrix(scenes: Sequence[Scene], captions: Sequence[Caption]) -> torch.Tensor:
    """[len(scenes), len(captions)] float: 1 where every object caption j names is in scene i."""
    return torch.tensor([[1.0 if caption_matches(c, s) else 0.0 for c in captions] for s in scenes])


class TrainBatches(torch.utils.data.Dataset):
    """Map-style dataset over steps: item ``k`` is the whole batch of training step ``k``.

    A batch is a dict: ``pixel_values`` [B, 3, S, S] (normalised like the saved
    ``preprocessor_config.json`` does), ``input_ids`` / ``attention_mask`` [B, T] (padded to
    the longest caption, truncated at ``context_length``), ``labels`` [B, B] (image x caption,
    see :func:`label_matrix`) and ``step``.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self._tokenizer = None  # built lazily in each process that uses it (DataLoader workers)

    def __len__(self) -> int:
        return self.config.steps

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_word_tokenizer(WORDS)
        return self._tokenizer

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def pairs(self, step: int) -> list[tuple[Scene, Caption]]:
        """The (scene, caption) pairs of training step ``step``."""
        c = self.config
        out = []
        for j in range(c.batch_size):
            scene = render_scene(split_seed("train", step * c.batch_size + j, base=c.seed), size=c.image_size,
                                 n_objects=c.n_objects)
            out.append((scene, make_caption(scene, c.caption_kind)))
        return out

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} out of range for {len(self)} steps")
        pairs = self.pairs(step)
        scenes = [s for s, _ in pairs]
        captions = [c for _, c in pairs]
        images = torch.stack([s.image for s in scenes])
        mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        enc = self.tokenizer([c.text for c in captions], padding=True, truncation=True,
                             max_length=self.config.context_length, return_tensors="pt")
        return {"step": step, "pixel_values": (images - mean) / std, "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"], "labels": label_matrix(scenes, captions)}


# --------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------


def build_model(config: TrainConfig, tokenizer=None):
    """A freshly initialised CLIPModel (deterministic from ``config.seed``; the caller's RNG untouched)."""
    from transformers import CLIPModel

    from .models import clip_config

    tokenizer = tokenizer or build_word_tokenizer(WORDS)
    architecture = clip_config(config, tokenizer, logit_scale_init_value=config.logit_scale_init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = CLIPModel(architecture)
    return model


def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: binary log-loss of every (image, caption) pair, summed, over the batch size.

    ``logits`` and ``labels`` are [images, captions]; labels are 1 (match) or 0.
    """
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of captions whose best-scoring image in the batch is a positive."""
    best = logits.argmax(dim=0)
    return float(labels[best, torch.arange(labels.shape[1], device=labels.device)].float().mean())


def _forward_backward(model, logit_bias: torch.nn.Parameter, batch: dict[str, Any], dev: torch.device,
                      amp: bool) -> tuple[float, float]:
    """Loss of one batch, its gradients accumulated into the parameters: (loss, batch accuracy)."""
    pixel_values = batch["pixel_values"].to(dev, non_blocking=True)
    input_ids = batch["input_ids"].to(dev, non_blocking=True)
    attention_mask = batch["attention_mask"].to(dev, non_blocking=True)
    labels = batch["labels"].to(dev, non_blocking=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    logits = out.logits_per_image.float() + logit_bias  # [images, captions]
    loss = sigmoid_loss(logits, labels)
    loss.backward()
    return float(loss.detach()), batch_accuracy(logits.detach(), labels)


def _lr_schedule(warmup: int, total: int):
    def factor(step: int) -> float:  # step: index of the optimiser step about to run
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def _optimizer(model: torch.nn.Module, logit_bias: torch.nn.Parameter, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2] + [logit_bias]  # biases, norms, logit_scale, class token
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), eps=1e-8)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["n_objects"] = list(d["n_objects"])
    return d


def _config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    current = _config_dict(config)
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in _RESUME_FREE:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, tuple):
            a = list(a)
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def checkpoint_step(out_dir: str | Path) -> int | None:
    """The step a checkpoint in ``out_dir`` was written at, or None when there is none."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops cleanly after its step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _DeferInterrupt:
    """While active (main thread only), a first Ctrl-C sets ``requested``; a second one raises."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device={device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r}: CUDA is not available here; use --device cpu")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def train(config: TrainConfig, out_dir: str | Path, *, device: str | torch.device = "cpu", resume: bool = True,
          progress: bool = True, command: str | None = None, keep_checkpoint: bool = False,
          stop_after: int | None = None, time_limit: float | None = None) -> Path:
    """Train a CLIPModel on the shapes world and save it, loadable by ``m2ib.load(out_dir)``.

    Args:
        config: the run (see :class:`TrainConfig`; :data:`QUICK` is a tiny one).
        out_dir: where the model goes; ``out_dir/checkpoint.pt`` is written every
            ``config.checkpoint_every`` steps, at the end and on Ctrl-C (then re-raised).
        device: ``"cpu"``, ``"cuda"``, ...
        resume: continue from ``out_dir/checkpoint.pt`` when there is one (its config must
            equal ``config`` up to ``workers`` and ``checkpoint_every``); False starts over.
        progress: show a progress bar with the loss and the in-batch accuracy.
        command: recorded in ``m2ib.json`` (default: this process's command line).
        keep_checkpoint: keep ``checkpoint.pt`` after the final save (default: delete it, the
            shipped directory holds only the model).
        stop_after: stop once this many steps (in all, resumed ones included) are done, saving
            the checkpoint but not the model, as if interrupted (for runs in parts).
        time_limit: likewise, stop after this many seconds of this call's training loop.

    Returns:
        ``out_dir``. The model files are there once all ``config.steps`` are done.
    """
    from transformers import __version__ as transformers_version

    dev = _resolve_device(device)
    amp = dev.type == "cuda" if config.amp is None else bool(config.amp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT

    tokenizer = build_word_tokenizer(WORDS)
    model = build_model(config, tokenizer).to(dev).train()
    logit_bias = torch.nn.Parameter(torch.tensor(float(config.logit_bias_init), device=dev))
    optimizer = _optimizer(model, logit_bias, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(config.warmup_steps, config.steps))
    step, wall, history = 0, 0.0, []  # history: [loss, batch accuracy] per step
    saved_step = None  # the step of the checkpoint on disk, once this call wrote one

    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        diffs = _config_differences(ckpt["config"], config)
        if diffs:
            raise InputError(f"{ckpt_path} was made with another config ({'; '.join(diffs)}): use the same "
                             "settings, --no-resume to start over, or another --out")
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            logit_bias.copy_(ckpt["logit_bias"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, wall, history = int(ckpt["step"]), float(ckpt["wall_seconds"]), [list(h) for h in ckpt["history"]]

    def save_checkpoint() -> None:
        nonlocal saved_step
        state = {"model": model.state_dict(), "logit_bias": logit_bias.detach(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                 "config": _config_dict(config), "wall_seconds": wall + (time.perf_counter() - loop_start),
                 "history": history, "format": 1}
        atomic_write(ckpt_path, lambda f: torch.save(state, f))
        saved_step = step

    dataset = TrainBatches(config)
    workers = config.workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(step, config.steps), num_workers=workers,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_ignore_sigint if workers > 0 else None)
    params = list(model.parameters()) + [logit_bias]
    limit = config.steps if stop_after is None else max(step, min(config.steps, int(stop_after)))

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="training", unit="step",
               dynamic_ncols=True)
    loop_start = time.perf_counter()
    updating = False
    interrupt = _DeferInterrupt()
    try:
        with interrupt:
            try:
                for batch in loader if step < limit else ():
                    if int(batch["step"]) != step:  # cannot happen: the sampler runs step, step + 1, ...
                        raise RuntimeError(f"data loader gave step {int(batch['step'])}, expected {step}")
                    loss, accuracy = _forward_backward(model, logit_bias, batch, dev, amp)
                    if config.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    updating = True  # a second Ctrl-C from here to `updating = False` tears the state
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
                    step += 1
                    updating = False
                    history.append([loss, accuracy])
                    recent = history[-20:]
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(h[0] for h in recent) / len(recent):.4f}",
                                    acc=f"{sum(h[1] for h in recent) / len(recent):.3f}", refresh=False)
                    out_of_time = time_limit is not None and time.perf_counter() - loop_start >= time_limit
                    if step % config.checkpoint_every == 0 or step >= limit or out_of_time or interrupt.requested:
                        save_checkpoint()
                    if interrupt.requested:
                        raise KeyboardInterrupt
                    if step >= limit or out_of_time:
                        break
            except Exception:
                if interrupt.requested:  # e.g. a DataLoader worker stopped by the same Ctrl-C
                    raise KeyboardInterrupt from None
                raise
    except KeyboardInterrupt:
        if not updating and saved_step != step:
            save_checkpoint()
        bar.close()
        where = f"checkpoint saved in {ckpt_path}" if not updating else f"the last checkpoint in {ckpt_path} stays"
        print(f"interrupted at step {step}/{config.steps}; {where}: run the same command again to resume",
              file=sys.stderr)
        raise
    finally:
        bar.close()
        wall += time.perf_counter() - loop_start
        del loader  # stops the workers

    if step < config.steps:
        if progress:
            print(f"stopped at step {step}/{config.steps}; checkpoint saved in {ckpt_path}: run again to resume",
                  file=sys.stderr)
        return out_dir

    _save_model(model, out_dir)
    save_word_tokenizer(WORDS, out_dir)
    _write_json(out_dir / "preprocessor_config.json", preprocessor_config(config.image_size))
    meta_path = out_dir / "m2ib.json"
    recommended: dict = {}
    if meta_path.exists():
        try:
            recommended = json.loads(meta_path.read_text()).get("recommended", {}) or {}
        except (json.JSONDecodeError, AttributeError):
            recommended = {}
    tail = history[-50:]
    every = max(1, config.steps // 20)
    meta = {
        "name": "shapes",
        "training": {
            "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
            "config": _config_dict(config),
            "steps": step,
            "wall_seconds": round(wall, 2),
            "device": _device_name(dev),
            "amp_bf16": amp,
            "torch": torch.__version__,
            "transformers": transformers_version,
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": history[-1][0] if history else None,
            "final_batch_accuracy": history[-1][1] if history else None,
            "mean_loss_last_50": sum(h[0] for h in tail) / len(tail) if tail else None,
            "mean_batch_accuracy_last_50": sum(h[1] for h in tail) / len(tail) if tail else None,
            "loss_curve": {str(k + every): round(sum(h[0] for h in history[k:k + every]) / len(history[k:k + every]), 5)
                           for k in range(0, len(history), every)},
            "logit_scale": float(model.logit_scale.detach().exp()),
            "logit_bias": float(logit_bias.detach()),
        },
        "recommended": recommended,
    }
    _write_json(meta_path, meta)
    if not keep_checkpoint:
        ckpt_path.unlink(missing_ok=True)
    return out_dir


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """A CLIPImageProcessor config reproducing training's preprocessing for a [S, S] scene image."""
    return {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
            "do_center_crop": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3,
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}


def _save_model(model: torch.nn.Module, out_dir: Path) -> None:
    model.eval()
    model.save_pretrained(out_dir)  # safetensors (the default of every supported transformers)
    if not (out_dir / "model.safetensors").exists():
        raise RuntimeError(f"save_pretrained wrote no {out_dir / 'model.safetensors'}")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a small CLIP on the shapes world (sigmoid loss with exact multi-positive labels) "
                    "into a directory m2ib.load() reads. Rerunning the same command resumes from "
                    "DIR/checkpoint.pt.")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the model (and checkpoint) goes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="start from the tiny QUICK config instead of the default")
    parser.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint.pt exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep DIR/checkpoint.pt after the final save")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help=f"stop after N steps in all, keeping the checkpoint (exit status {EXIT_UNFINISHED})")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help=f"stop after this long, keeping the checkpoint (exit status {EXIT_UNFINISHED})")
    group = parser.add_argument_group("training config (TrainConfig fields; defaults: TrainConfig() or QUICK)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f"{f.default!r}"
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if kind is bool or (args and args[0] is bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default: {default}: on for CUDA only)" if f.name == "amp" else None)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, dest=f.name, type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                               help=f"(default: {default})")
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                               help=f"(default: {default})")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m m2ib.training") -> int:
    """``python -m m2ib.training``: returns 0 when the model is saved, 2 on bad input, 3 when
    stopped early with a checkpoint (--stop-after, --time-limit), 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    base = QUICK if args.quick else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    if "n_objects" in overrides:
        overrides["n_objects"] = tuple(overrides["n_objects"])
    try:
        config = replace(base, **overrides)
        out = train(config, args.out, device=args.device, resume=not args.no_resume,
                    progress=not args.no_progress, command=f"{prog} " + shlex.join(argv),
                    keep_checkpoint=args.keep_checkpoint, stop_after=args.stop_after, time_limit=args.time_limit)
    except M2IBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    done = checkpoint_step(out) in (None, config.steps) and (out / "model.safetensors").exists()
    if not done:
        print(f"unfinished: {out / CHECKPOINT} (run the same command again to go on)")
        return EXIT_UNFINISHED
    print(f"model saved to {out} (load it with m2ib.load({str(out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
