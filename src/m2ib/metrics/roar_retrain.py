"""ROAR+'s task, one piece at a time: its scenes, its budgets, removing the top-k % pixels, and
retraining a fresh model on the degraded images (see :mod:`m2ib.metrics.roar` for the protocol)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

import torch

from ..errors import InputError


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
    "full": RoarBudget(
        "full",
        train=20000,
        test=1500,
        ks=(10, 20, 30, 40, 50, 60, 70, 80, 90),
        steps=3000,
        batch_size=256,
        tiny_model=False,
    ),
}


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
    return TrainConfig(
        image_size=size,
        patch_size=patch,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        text_width=32,
        text_layers=2,
        text_heads=2,
        embed_dim=32,
        steps=budget.steps,
        batch_size=budget.batch_size,
        warmup_steps=max(1, budget.steps // 10),
        lr=2e-3,
        seed=seed,
        workers=0,
    )


@overload
def retrain_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    prompts: Sequence[str],
    config,
    device: str | torch.device = ...,
    details: Literal[False] = ...,
) -> float: ...


@overload
def retrain_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    prompts: Sequence[str],
    config,
    device: str | torch.device = ...,
    *,
    details: Literal[True],
) -> dict[str, float]: ...


def retrain_accuracy(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    prompts: Sequence[str],
    config,
    device: str | torch.device = "cpu",
    details: bool = False,
) -> float | dict[str, float]:
    """Train a fresh CLIP (``config``) on (images, class labels) with the sigmoid loss and return
    its zero-shot accuracy on the test images among ``prompts``. Deterministic on a CPU.

    ``details=True`` returns ``{"accuracy", "colour_accuracy", "shape_accuracy"}``: the share of
    test images whose predicted class has the right colour word (the prompt's second word),
    and the right shape word (its last word), besides the exact class."""
    from ..tokenizer import build_word_tokenizer
    from ..training import IMAGE_MEAN, IMAGE_STD, WORDS, build_model, sigmoid_loss, unit_features

    dev = torch.device(device)
    tokenizer = build_word_tokenizer(WORDS)
    # functools.wraps on PreTrainedModel.to hides that it is a method from mypy: a stub limitation
    model = build_model(config, tokenizer).to(dev).train()  # type: ignore[arg-type]
    bias = torch.nn.Parameter(torch.tensor(float(config.logit_bias_init), device=dev))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2] + [bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, config.beta2),
    )
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
        idx = torch.randperm(n, generator=g)[: min(config.batch_size, n)]
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
        text = unit_features(model.get_text_features(input_ids=ids, attention_mask=attention))
        predicted = []
        for start in range(0, test_images.shape[0], 256):
            pixels = ((test_images[start : start + 256] - mean) / std).to(dev)
            image = unit_features(model.get_image_features(pixel_values=pixels))
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
