"""ROAR+ on the shapes world: remove the top-k % attributed pixels, retrain, measure accuracy.

ROAR (Hooker et al., NeurIPS 2019) asks whether the pixels a method ranks first carry the
information a model *can learn from*: remove them from every training and test image, train a
fresh model on the degraded images, and measure its accuracy. The faster accuracy falls as
``k`` grows, the better the ranking: **lower accuracy is better**. A random ranking is the
control. Our "+" is the fill: removed pixels are filled by ROAD's noisy linear imputation
(:func:`m2ib.metrics.road.linear_impute`, on [0, 1] pixels, noise sd 0.01) rather than by a
constant, so the hole's outline (which, for a good map, *is* the object's outline) does not
leak the answer to the retrained model.

The task here, exactly:

* scenes: single-object shapes scenes at the evaluated model's input size; training scene
  ``j`` is ``render_scene(split_seed("train", j, base=1), size, n_objects=(1, 1))``, test scene
  ``j`` is ``render_scene(split_seed("test", j, base=1), ...)`` (base 1: disjoint from the scenes
  the model was trained on and from ``shapes:test:N`` rows); the text is the object's class
  prompt ("a red circle");
* maps: the evaluated method's image maps *of the evaluated model* for those pairs;
* retraining: a fresh small CLIP (:func:`m2ib.training.build_model`; config
  :func:`retrain_config`) trained with m2ib.training's sigmoid loss on the degraded training
  images, classes as labels;
* accuracy: zero-shot classification of the degraded test images among the 30 class prompts
  (also split into colour accuracy and shape accuracy: is the predicted class's colour, or
  shape, right). Chance: 1/30 exact, 1/6 colour, 1/5 shape.

With the reduced budgets the tiny retrained model learns colour but hardly shape (on clean
images about 1.0 colour accuracy and 0.2 shape accuracy, so about 0.2 exact): the reduced
ROAR+ then measures mostly whether the removed pixels held the named object's *colour*.

A full ROAR run retrains for every (method, k) at full scale, which needs a GPU. ``budget``
picks a reduced setting (:data:`BUDGETS`): fewer scenes, fewer k, a tiny model and few steps.
The numbers then measure "how much class information a tiny model can learn from a few
hundred degraded scenes", which ranks maps the same way in principle, with more noise. Every
record names its budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..errors import InputError
from ..fileio import atomic_write


@dataclass(frozen=True)
class RoarBudget:
    name: str
    train: int  # training scenes
    test: int  # held-out scenes
    ks: tuple[int, ...]  # percentages of pixels removed
    steps: int  # optimiser steps of each retraining
    batch_size: int  # scenes per step
    tiny_model: bool = True  # the tiny retraining architecture (else the shipped model's)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS: dict[str, RoarBudget] = {
    "tiny": RoarBudget("tiny", train=192, test=150, ks=(10, 50, 90), steps=150, batch_size=64),
    "small": RoarBudget("small", train=1024, test=300, ks=(10, 30, 50, 70, 90), steps=400, batch_size=128),
    "full": RoarBudget("full", train=20000, test=1500, ks=(10, 20, 30, 40, 50, 60, 70, 80, 90), steps=3000,
                       batch_size=256, tiny_model=False),
}
RANDOM = "random"  # the control ranking
NONE = "none"  # k = 0: no pixel removed (the same for every method)


def roar_scenes(size: int, n: int, split: str):
    """(images [n, 3, S, S] in [0, 1], class indices [n], prompts) of ROAR's single-object scenes."""
    from ..datasets.shapes import class_prompts, render_scene, split_seed

    classes = {(c, s): k for k, (c, s, _) in enumerate(class_prompts())}
    prompts = [p for _, _, p in class_prompts()]
    scenes = [render_scene(split_seed(split, j, base=1), size=size, n_objects=(1, 1)) for j in range(n)]
    labels = torch.tensor([classes[(sc.objects[0].colour, sc.objects[0].shape)] for sc in scenes])
    return torch.stack([sc.image for sc in scenes]), labels, prompts


def degrade(images: torch.Tensor, maps: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Remove the top ``k`` % pixels of each image by its map (random ties) and fill them by
    noisy linear imputation (noise sd 0.01 on [0, 1] pixels); values clamped to [0, 1]."""
    from .common import top_fraction_mask
    from .road import linear_impute

    out = images.clone()
    for i in range(images.shape[0]):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        removed = top_fraction_mask(maps[i], k / 100.0, g)
        out[i] = linear_impute(images[i], removed, 0.01, g).clamp(0.0, 1.0)
    return out


def retrain_config(size: int, budget: RoarBudget, seed: int):
    """The m2ib.training config of the retrained model."""
    from ..training import TrainConfig

    if not budget.tiny_model:
        return TrainConfig(image_size=size, steps=budget.steps, batch_size=budget.batch_size, seed=seed, workers=0)
    patch = next((p for p in (12, 8, 16, 6, 4) if size % p == 0), None)
    if patch is None:
        raise InputError(f"no patch size divides the image size {size}")
    return TrainConfig(image_size=size, patch_size=patch, vision_width=64, vision_layers=2, vision_heads=2,
                       text_width=32, text_layers=2, text_heads=2, embed_dim=32, steps=budget.steps,
                       batch_size=budget.batch_size, warmup_steps=max(1, budget.steps // 10), lr=2e-3,
                       seed=seed, workers=0)


def retrain_accuracy(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                     test_labels: torch.Tensor, prompts: Sequence[str], config, device: str | torch.device = "cpu",
                     details: bool = False) -> float | dict[str, float]:
    """Train a fresh CLIP (``config``) on (images, class labels) with the sigmoid loss and return
    its zero-shot accuracy on the test images among ``prompts``. Deterministic on a CPU.

    ``details=True`` returns ``{"accuracy", "colour_accuracy", "shape_accuracy"}``: the share of
    test images whose predicted class has the right colour word (the prompt's second word),
    and the right shape word (its last word), besides the exact class."""
    from ..training import IMAGE_MEAN, IMAGE_STD, WORDS, build_model, sigmoid_loss
    from ..tokenizer import build_word_tokenizer

    dev = torch.device(device)
    tokenizer = build_word_tokenizer(WORDS)
    model = build_model(config, tokenizer).to(dev).train()
    bias = torch.nn.Parameter(torch.tensor(float(config.logit_bias_init), device=dev))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2] + [bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, config.beta2))
    warm, total = config.warmup_steps, config.steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    ids, attention = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    g = torch.Generator().manual_seed(config.seed)
    n = train_images.shape[0]
    for _ in range(total):
        idx = torch.randperm(n, generator=g)[:min(config.batch_size, n)]
        pixels = ((train_images[idx] - mean) / std).to(dev)
        labels = train_labels[idx]
        out = model(input_ids=ids[labels.to(dev)], attention_mask=attention[labels.to(dev)], pixel_values=pixels)
        target = (labels[:, None] == labels[None, :]).float().to(dev)
        loss = sigmoid_loss(out.logits_per_image.float() + bias, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [bias], config.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        text = torch.nn.functional.normalize(_features(model.get_text_features(input_ids=ids, attention_mask=attention)),
                                             dim=-1)
        predicted = []
        for start in range(0, test_images.shape[0], 256):
            pixels = ((test_images[start:start + 256] - mean) / std).to(dev)
            image = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
            predicted.extend((image @ text.T).argmax(1).cpu().tolist())
    truth = test_labels.tolist()
    n = len(truth)
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / n
    if not details:
        return accuracy
    words = [p.split() for p in prompts]
    colour = sum(words[p][1] == words[t][1] for p, t in zip(predicted, truth)) / n
    shape = sum(words[p][-1] == words[t][-1] for p, t in zip(predicted, truth)) / n
    return {"accuracy": accuracy, "colour_accuracy": colour, "shape_accuracy": shape}


def _features(out: Any) -> torch.Tensor:
    """Projected features from get_*_features (a tensor before transformers 5, an output object after)."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def method_maps(backend: Backend, method: str, images: torch.Tensor, labels: torch.Tensor, prompts: Sequence[str],
                settings: dict[str, Any] | None, seed: int, batch_size: int = 16) -> torch.Tensor:
    """The method's image maps [n, S, S] for ROAR's scenes (or random ones for ``RANDOM``)."""
    if method == RANDOM:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape[0], images.shape[2], images.shape[3], generator=g)
    from .. import api

    texts = [prompts[int(c)] for c in labels]
    exps = api.explain(backend, list(images), texts, method=method, modalities=("image",), batch_size=batch_size,
                       progress=False, **{"seed": seed, **(settings or {})})
    return torch.stack([e.image_map for e in exps]).float()


MAP_CHUNK = 32  # scenes per cached chunk of maps: a crash loses at most the chunk in flight


def cached_maps(backend: Backend, method: str, images: torch.Tensor, labels: torch.Tensor, prompts: Sequence[str],
                settings: dict[str, Any] | None, seed: int, cache: Path | None, tag: str,
                stop: Callable[[], bool] | None = None, bar: Any = None) -> torch.Tensor | None:
    """:func:`method_maps` chunk by chunk (:data:`MAP_CHUNK` scenes), each chunk written
    atomically to ``cache/<method>-<tag>-<first>-<end>.pt`` and read back instead of recomputed
    when it is there: maps of slow methods (RISE, Kernel SHAP: about an hour on a CPU) survive a
    crash. The chunks equal one call on all scenes (per-pair seeds). None when ``stop()`` said stop."""
    if method == RANDOM:
        return method_maps(backend, method, images, labels, prompts, settings, seed)
    n, size = images.shape[0], images.shape[-2:]
    chunks = []
    for first in range(0, n, MAP_CHUNK):
        end = min(n, first + MAP_CHUNK)
        path = cache / f"{method}-{tag}-{first:05d}-{end:05d}.pt" if cache is not None else None
        chunk = None
        if path is not None and path.exists():
            try:
                chunk = torch.load(path, weights_only=True)
            except Exception:  # a damaged file: compute the chunk again
                chunk = None
            if not isinstance(chunk, torch.Tensor) or chunk.shape != (end - first, *size):
                chunk = None
        if chunk is None:
            if stop is not None and stop():
                return None
            chunk = method_maps(backend, method, images[first:end], labels[first:end], prompts, settings, seed)
            if path is not None:
                atomic_write(path, lambda f, c=chunk: torch.save(c, f))
        chunks.append(chunk)
        if bar is not None:
            bar.update(end - first)
    return torch.cat(chunks)


def roar(backend: Backend, methods: Sequence[str], settings: dict[str, dict[str, Any]] | None = None,
         budget: str | RoarBudget = "tiny", seed: int = 0, done: Callable[[str, int], bool] | None = None,
         emit: Callable[[dict[str, Any]], None] | None = None, progress: bool = False,
         stop: Callable[[], bool] | None = None, cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """ROAR+ for ``methods`` (plus the random control and k = 0) under a budget.

    Args:
        done: ``done(method, k)`` says which results exist already (skipped).
        emit: receives each record as soon as it is measured (the evaluation runner appends it
            to its results file).
        stop: returning True ends the work before the next retraining or map chunk.
        cache: a folder for the methods' maps, in chunks (see :func:`cached_maps`), so a
            re-run after a crash does not compute them again; a method's files are removed
            once its last ``k`` is measured. None: maps are kept in memory only.

    Returns:
        The records measured by this call: ``{"kind": "roar", "method", "k", "accuracy",
        "colour_accuracy", "shape_accuracy", "budget", "seconds"}``.
    """
    import time

    from tqdm.auto import tqdm

    plan = BUDGETS[budget] if isinstance(budget, str) else budget
    size = backend.geometry.image_size[0]
    config = retrain_config(size, plan, seed)
    folder = Path(cache) if cache is not None else None
    work = [(NONE, 0)] + [(m, k) for m in [*methods, RANDOM] for k in plan.ks]
    todo = [(m, k) for m, k in work if not (done and done(m, k))]
    records: list[dict[str, Any]] = []
    if not todo:
        return records
    train_x, train_y, prompts = roar_scenes(size, plan.train, "train")
    test_x, test_y, _ = roar_scenes(size, plan.test, "test")
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with tqdm(total=len(todo), desc="ROAR+", unit="run", disable=not progress) as bar:
        for index, (method, k) in enumerate(todo):
            if stop is not None and stop():
                break
            start = time.perf_counter()
            if method == NONE:
                tr, te = train_x, test_x
            else:
                if method not in maps:
                    own = (settings or {}).get(method, {})
                    with tqdm(total=plan.train + plan.test, desc=f"ROAR+ maps ({method})", unit="scene",
                              leave=False, disable=not progress or method == RANDOM) as scenes:
                        train_maps = cached_maps(backend, method, train_x, train_y, prompts, own, seed, folder,
                                                 "train", stop, scenes)
                        test_maps = None if train_maps is None else cached_maps(
                            backend, method, test_x, test_y, prompts, own, seed + 1, folder, "test", stop, scenes)
                    if test_maps is None:
                        break  # stopped: the chunks done so far are on disk
                    maps[method] = (train_maps, test_maps)
                tr = degrade(train_x, maps[method][0], k, seed)
                te = degrade(test_x, maps[method][1], k, seed + 7)
            scores = retrain_accuracy(tr, train_y, te, test_y, prompts, config, details=True)
            record = {"kind": "roar", "method": method, "k": k, **scores, "budget": plan.name,
                      "seconds": round(time.perf_counter() - start, 3)}
            records.append(record)
            if emit:
                emit(record)
            bar.update(1)
            if folder is not None and all(m != method for m, _ in todo[index + 1:]):
                maps.pop(method, None)
                for path in [*folder.glob(f"{method}-*.pt"), *folder.glob(f".{method}-*.tmp")]:
                    path.unlink()  # its results are recorded: the maps are no longer needed
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return records
