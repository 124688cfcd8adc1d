"""M2IB: multi-modal information bottleneck attribution.

Wang, Rudner, Wilson, "Visual Explanations of Image-Text Representations via Multi-Modal
Information Bottleneck Attribution", NeurIPS 2023, https://arxiv.org/abs/2312.17174

For one pair and one tower, hidden states R at the output of block ``layer`` are replaced by
Z = lam * R + (1 - lam) * eps, eps ~ N(0, var), lam = sigmoid(alpha), alpha of R's shape.
alpha is fitted with Adam to minimise ``beta * mean KL(N(lam R, (1-lam)^2 var) || N(0, var))
- mean cos(embedding(Z), other modality's embedding)`` over ``samples`` noise copies. The
attribution is the KL of the last step's forward pass summed over channels.

Fast path (same numbers as re-running the whole model): the tower's prefix up to the
bottleneck runs once per pair, the other modality's embedding once per pair, and only the
blocks after the bottleneck run on the noise copies; weights are frozen, so backward stops
at alpha. Pairs are fitted together, each with its own alpha, loss term and noise stream,
so a pair's map does not depend on the batch it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from .base import PRECISIONS, Method, RawScores, Settings, autocast, register, setting



def default_layer(num_layers: int) -> int:
    """The bottleneck block for a tower of ``num_layers`` blocks when none is named.

    The paper uses the output of block 9 (0-based) of CLIP's 12-block towers, leaving two
    blocks after it. Other depths keep the same relative depth: round(10/12 * L) - 1.
    """
    return max(0, min(num_layers - 1, round(10 * num_layers / 12) - 1))


@dataclass(frozen=True)
class M2IBSettings(Settings):
    """M2IB's settings; defaults are the paper's (CLIP ViT-B/32, Conceptual Captions)."""

    vision_layer: int | None = setting(
        None, "image tower block whose output is bottlenecked (0-based, negative from the end); "
              "default: the model's recommended layer, else 9 for 12 blocks (same relative depth otherwise)")
    text_layer: int | None = setting(
        None, "text tower block whose output is bottlenecked; default as for vision_layer")
    vision_beta: float = setting(0.1, "weight of the compression (KL) term for the image bottleneck")
    text_beta: float = setting(0.1, "weight of the compression (KL) term for the text bottleneck")
    var: float = setting(1.0, "variance of the noise and of the prior N(0, var)")
    steps: int = setting(10, "optimisation steps of the bottleneck")
    lr: float = setting(1.0, "Adam learning rate")
    samples: int = setting(10, "noise copies per step")
    init_alpha: float = setting(5.0, "initial value of alpha (lam = sigmoid(alpha) starts near 1)")
    precision: str = setting("fp32", "arithmetic of the blocks after the bottleneck: fp32 (default, "
                                     "exact), or bf16/fp16 autocast (faster, opt-in)", choices=PRECISIONS)

    def validate(self) -> None:
        super().validate()
        for name in ("steps", "samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"{name}={value!r} must be a positive integer")
        for name in ("lr", "var"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise InputError(f"{name}={value!r} must be a positive number")
        for name in ("vision_beta", "text_beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise InputError(f"{name}={value!r} must be a number >= 0")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}")
        for name in ("vision_layer", "text_layer"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{name}={value!r} must be an integer block index")


@register
class M2IB(Method):
    """Multi-modal information bottleneck attribution (image and text)."""

    name = "m2ib"
    title = "M2IB"
    paper = "https://arxiv.org/abs/2312.17174"
    Settings = M2IBSettings

    def resolved(self, backend: Backend, settings: M2IBSettings) -> M2IBSettings:
        layers = {}
        for modality, field_name in (("image", "vision_layer"), ("text", "text_layer")):
            value = getattr(settings, field_name)
            if value is None:
                value = default_layer(backend.num_layers(modality))
            layers[field_name] = backend.resolve_layer(modality, value, field_name)
        return M2IBSettings(**{**settings.as_dict(), **layers})

    def attribute(self, backend: Backend, modality: Modality, images: ImageBatch, texts: TextBatch,
                  targets: torch.Tensor, settings: M2IBSettings) -> RawScores:
        batch = images if modality == "image" else texts
        layer = settings.vision_layer if modality == "image" else settings.text_layer
        beta = settings.vision_beta if modality == "image" else settings.text_beta
        kl_map, info = fit_bottleneck(backend, modality, batch, layer, targets, beta, settings)
        return RawScores(kl_map, info)


def kl_to_prior(lam_r: torch.Tensor, log_one_minus_lam: torch.Tensor, var: float) -> torch.Tensor:
    """Elementwise KL( N(lam R, (1-lam)^2 var) || N(0, var) ).

    ``log(1 - lam)`` is passed as ``logsigmoid(-alpha)`` so it stays finite however large
    alpha grows (the paper's ``log((1 - lam)^2)`` reaches -inf in float32 near alpha = 17).
    """
    one_minus_sq = torch.exp(2 * log_one_minus_lam)
    return 0.5 * (one_minus_sq + lam_r.square() / var - 1.0 - 2.0 * log_one_minus_lam)


def noise_generators(device: torch.device, seed: int, n: int) -> list[torch.Generator]:
    """One generator per pair, all seeded alike: a pair's noise is the same in any batch."""
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(n)]


def fit_bottleneck(backend: Backend, modality: Modality, batch: ImageBatch | TextBatch, layer: int,
                   targets: torch.Tensor, beta: float, s: M2IBSettings) -> tuple[torch.Tensor, list[dict]]:
    """Fit one bottleneck per pair of ``batch`` at ``layer``; return KL maps [N, tokens] and info."""
    device = backend.device
    with torch.no_grad(), autocast(device, s.precision):
        hidden = backend.prefix(modality, batch, layer)
    hidden = hidden.float()  # [N, T, D]
    n, t, d = hidden.shape
    if modality == "text":
        valid = batch.attention_mask.to(device).float()  # padding carries no information
        lengths = batch.lengths.tolist()
    else:
        valid = torch.ones(n, t, device=device)
        lengths = [t] * n
    elements = valid.sum(1) * d  # per pair: the mean of the KL runs over its own tokens only
    copies = batch.repeat_interleave(s.samples)
    target = targets.to(device).float().repeat_interleave(s.samples, 0)
    generators = noise_generators(device, s.seed, n)
    std = s.var ** 0.5

    # All steps' noise at once, per pair at its own length (few kernel launches on a GPU).
    noise = torch.empty(n, s.steps, s.samples, t, d, device=device)
    for i, g in enumerate(generators):
        if lengths[i] == t:
            torch.randn(s.steps, s.samples, t, d, generator=g, device=device, out=noise[i])
        else:
            noise[i].zero_()
            noise[i, :, :, : lengths[i]] = torch.randn(s.steps, s.samples, lengths[i], d, generator=g,
                                                       device=device)

    alpha = torch.full_like(hidden, float(s.init_alpha), requires_grad=True)
    # One fused kernel per step on a GPU; the same update rule as the default implementation.
    optimiser = torch.optim.Adam([alpha], lr=s.lr, fused=device.type == "cuda")
    kl = compression = fit = None
    for step in range(s.steps):
        lam = torch.sigmoid(alpha)
        log_one_minus = F.logsigmoid(-alpha)
        lam_r = lam * hidden
        kl = kl_to_prior(lam_r, log_one_minus, s.var)  # [N, T, D]
        # Z = lam R + (1 - lam) sqrt(var) eps, for every noise copy: [N, S, T, D]
        z = torch.addcmul(lam_r[:, None], (torch.exp(log_one_minus) * std)[:, None], noise[:, step])
        with autocast(device, s.precision):
            emb = backend.suffix(modality, z.reshape(n * s.samples, t, d), layer, copies)
        fit = F.cosine_similarity(emb.float(), target, dim=-1, eps=1e-6).view(n, s.samples).mean(1)
        compression = (kl * valid[..., None]).sum((1, 2)) / elements
        loss = (beta * compression - fit).sum()  # pairs are independent: sum of per-pair losses
        (grad,) = torch.autograd.grad(loss, alpha)
        alpha.grad = grad
        optimiser.step()
    kl_map = (kl.detach() * valid[..., None]).sum(-1)  # from the last step's forward, as in the paper
    numbers = torch.stack([compression.detach(), fit.detach()], 1).tolist()  # one device sync, not 2N
    info = [{"compression": c, "fit": f} for c, f in numbers]
    return kl_map, info
