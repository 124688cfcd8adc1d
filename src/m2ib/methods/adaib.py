"""AdaIB: the adaptive multimodal information bottleneck objective, an option of M2IB.

"Evil in the Pairing Assumption: Multimodal attribution via adaptive information bottleneck"
(anonymous, under review, https://openreview.net/forum?id=NuYcnDYQuQ). Per pair (x, y), the
bottleneck maximises ``f(x, y) * fit - g(f(x, y)) * KL`` instead of M2IB's ``fit - beta * KL``:
f is a fixed relevance score of the pair (larger: better aligned), g a positive non-increasing
compression weight, so the effective beta is g / f. A constant f with g = beta * f is M2IB
(the paper's Proposition 1). Everything here runs only with ``objective="adaib"``; the published
objective's loop never reads it. See docs/adaib.md for the reading of the paper and its gaps.

Plain functions and one small state class (:class:`AdaIBTerms`) used by :mod:`.m2ib`'s loop;
not a registered method.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import Backend, ImageBatch, TextBatch
from ..errors import InputError
from ..settings import check_choice, check_number, check_positive_int
from .base import autocast

#: ``published``: M2IB's loss, beta * KL - fit. ``adaib``: g(f) * KL - f * fit (this module).
OBJECTIVES = ("published", "adaib")
#: f(x, y): ``l2`` / ``l1`` / ``linf``: 1 / (distance + eps_f) of the two embeddings (the paper's
#: inverse-distance form; L2 is its default, Chebyshev = linf is in its ablation); ``cosine``:
#: softplus(tau * (1 + cos) / 2) + eps_f; ``constant``: f = adaib_constant for every pair.
RELEVANCES = ("l2", "l1", "linf", "cosine", "constant")
#: g(f): ``mlp``: eps_g + softplus(MLP 1 -> hidden -> 1, ReLU), learned with the bottleneck;
#: ``inverse``: 1 / (f + eps_g), fixed; ``proportional``: beta * f (Proposition 1: M2IB again).
COMPRESSIONS = ("mlp", "inverse", "proportional")
#: The embeddings the distances read: ``raw`` (projected, as the model returns them) or unit-norm.
EMBEDDINGS = ("raw", "normalised")
NORMS = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coefficient max_norm / (norm + 1e-6)


def _reads(s: Any) -> dict[str, bool]:
    """Each AdaIB setting -> whether ``s`` reads it; one read nowhere must stay at its default.

    Not vision_beta / text_beta: read by AdaIB only with g = beta * f (proportional), they are not
    refused otherwise, because a model's recommended settings set them (the shapes model's 1.0);
    each pair's info records the g / f the fit used instead (``effective_beta``)."""
    adaib = s.objective == "adaib"
    relevance, compression = s.adaib_relevance, s.adaib_compression
    return {
        "adaib_relevance": adaib,
        "adaib_compression": adaib,
        "adaib_clip": adaib,
        "adaib_embeddings": adaib and relevance in NORMS,
        "adaib_eps_f": adaib and relevance != "constant",
        "adaib_tau": adaib and relevance == "cosine",
        "adaib_constant": adaib and relevance == "constant",
        "adaib_hidden": adaib and compression == "mlp",
        "adaib_eps_g": adaib and compression in ("mlp", "inverse"),
    }


def check_settings(s: Any) -> None:
    """Ranges, then "honoured or refused, never ignored": a setting this objective does not read,
    changed from its default, is an error naming it (e.g. an AdaIB setting with objective=published)."""
    check_choice(s.objective, "objective", OBJECTIVES)
    check_choice(s.adaib_relevance, "adaib_relevance", RELEVANCES)
    check_choice(s.adaib_compression, "adaib_compression", COMPRESSIONS)
    check_choice(s.adaib_embeddings, "adaib_embeddings", EMBEDDINGS)
    for name in ("adaib_eps_f", "adaib_eps_g", "adaib_tau", "adaib_constant"):
        check_number(getattr(s, name), name, strict=True)
    check_number(s.adaib_clip, "adaib_clip")
    check_positive_int(s.adaib_hidden, "adaib_hidden")
    defaults = {f.name: f.default for f in dataclasses.fields(s)}
    for name, read in _reads(s).items():
        if getattr(s, name) != defaults[name] and not read:
            where = (
                "objective=published"
                if s.objective == "published"
                else f"adaib_relevance={s.adaib_relevance}, adaib_compression={s.adaib_compression}"
            )
            raise InputError(
                f"{name}={getattr(s, name)!r} is not read with {where}: leave {name} at its default "
                f"({defaults[name]!r}) or choose the objective / form that reads it (docs/adaib.md)",
                settings=(name, "objective"),
            )


def relevance_of(image_emb: torch.Tensor, text_emb: torch.Tensor, s: Any) -> torch.Tensor:
    """f [N] of each pair from the towers' projected embeddings [N, E] (not normalised)."""
    image_emb, text_emb = image_emb.float(), text_emb.float()
    if s.adaib_relevance == "constant":
        return torch.full((len(image_emb),), float(s.adaib_constant), device=image_emb.device)
    if s.adaib_relevance == "cosine":  # cos on unit-norm features, rescaled to [0, 1]
        similarity = (1 + F.cosine_similarity(image_emb, text_emb, dim=-1, eps=1e-12)) / 2
        return F.softplus(s.adaib_tau * similarity) + s.adaib_eps_f
    if s.adaib_embeddings == "normalised":
        image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    distance = torch.linalg.vector_norm(image_emb - text_emb, ord=NORMS[s.adaib_relevance], dim=-1)
    return 1.0 / (distance + s.adaib_eps_f)


def pair_relevance(backend: Backend, images: ImageBatch, texts: TextBatch, s: Any) -> torch.Tensor:
    """f [N] of the unmasked pairs: fixed during the fit (the paper's f is a heuristic, not learned)."""
    with torch.no_grad(), autocast(backend.device, s.precision):
        return relevance_of(backend.embed("image", images), backend.embed("text", texts), s)


def mlp_init(n: int, hidden: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """Per pair, the same draw of torch.nn.Linear's default init (uniform, bound 1/sqrt(fan_in)),
    from a CPU generator seeded with ``seed``, in the order w1, b1, w2, b2 (of Linear(1, hidden)
    then Linear(hidden, 1)): a pair's g starts the same in any batch and on any device."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, bound in ((hidden, 1.0), (hidden, 1.0), (hidden, hidden**-0.5), (1, hidden**-0.5)):
        draw = (torch.rand(size, generator=g) * 2 - 1) * bound
        out.append(draw.expand(n, size).clone().to(device).requires_grad_(True))
    return out


class AdaIBTerms:
    """A batch's f (fixed) and g (fixed, or an MLP per pair trained with the bottleneck)."""

    def __init__(self, relevance: torch.Tensor, beta: float | torch.Tensor, s: Any, device: torch.device):
        self.f = relevance.to(device).float()  # [N]
        # one beta, or one per pair [N] (m2ib tune fits several betas in one batch)
        self.beta = beta.to(device=device, dtype=torch.float32) if isinstance(beta, torch.Tensor) else beta
        self.s = s
        n = len(self.f)
        self.params = mlp_init(n, s.adaib_hidden, s.seed, device) if s.adaib_compression == "mlp" else []

    def weight(self) -> torch.Tensor:
        """g(f) [N]: the weight of each pair's compression term."""
        s, f = self.s, self.f
        if s.adaib_compression == "proportional":
            return self.beta * f
        if s.adaib_compression == "inverse":
            return 1.0 / (f + s.adaib_eps_g)
        w1, b1, w2, b2 = self.params
        u = (torch.relu(f[:, None] * w1 + b1) * w2).sum(1) + b2[:, 0]
        return s.adaib_eps_g + F.softplus(u)

    def backward(self, alpha: torch.Tensor, compression: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
        """Set the gradients of one step (alpha's and g's parameters), each pair's clipped to norm
        ``adaib_clip`` on its own (0: no clipping); returns g [N] of this step."""
        g = self.weight()
        loss = (g * compression - self.f * fit).sum()  # pairs are independent: sum of per-pair losses
        params = [alpha, *self.params]
        grads = torch.autograd.grad(loss, params)
        if self.s.adaib_clip > 0:
            norm = torch.stack([gr.flatten(1).square().sum(1) for gr in grads]).sum(0).sqrt()  # [N]
            coef = (self.s.adaib_clip / (norm + CLIP_EPS)).clamp(max=1.0)
            grads = tuple(gr * coef.view(-1, *([1] * (gr.dim() - 1))) for gr in grads)
        for p, gr in zip(params, grads):
            p.grad = gr
        return g.detach()
