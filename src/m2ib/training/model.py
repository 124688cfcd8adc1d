"""The model, its loss and its optimiser: a fresh CLIPModel, SigLIP's sigmoid loss, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..tokenizer import build_word_tokenizer
from .config import TrainConfig
from .data import WORDS

if TYPE_CHECKING:  # transformers loads lazily: imported where a model is built
    from transformers import CLIPModel

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on the learnt temperature


def build_model(config: TrainConfig, tokenizer=None) -> CLIPModel:
    """A freshly initialised CLIPModel (deterministic from ``config.seed``; the caller's RNG untouched)."""
    from transformers import CLIPModel

    from ..models import clip_config

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


def unit_features(out: Any) -> torch.Tensor:
    """Unit-length fp32 embeddings from ``get_image_features`` / ``get_text_features`` (a tensor
    before transformers 5, an output object holding it as ``pooler_output`` after)."""
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of captions whose best-scoring image in the batch is a positive."""
    best = logits.argmax(dim=0)
    return float(labels[best, torch.arange(labels.shape[1], device=labels.device)].float().mean())


def forward_backward(
    model, logit_bias: torch.nn.Parameter, batch: dict[str, Any], dev: torch.device, amp: bool
) -> tuple[float, float]:
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


def lr_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LambdaLR's factor: linear warm-up from 1 / ``warmup`` to 1, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:  # step: index of the optimiser step about to run
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: torch.nn.Module, logit_bias: torch.nn.Parameter, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only."""
    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2] + [logit_bias]  # biases, norms, logit_scale, class token
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), eps=1e-8)
