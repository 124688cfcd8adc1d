"""M2IB's bottleneck core, written once: the KL to the prior, the noise, and the optimisation loop
of alpha for any differentiable score of the bottlenecked states.

The CLIP path (:class:`m2ib.methods.m2ib.BottleneckFit`) scores Z with the rest of a tower and the
cosine to the other modality's embedding; the generative path (:mod:`m2ib.generative`) scores Z
with the rest of a language model and the log-likelihood of an answer. Both run
:func:`bottleneck_loop`, so the published math (Z = lam R + (1 - lam) sqrt(var) eps, the KL to
N(0, var), loss = beta * mean KL - mean score, Adam on alpha, the last step's KL as the map) has
one implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: z [N * samples, T, D] (copies of one pair adjacent) -> the score to maximise [N * samples].
Score = Callable[[torch.Tensor], torch.Tensor]
#: (compression [N], score [N]) -> None: sets the gradients of every parameter the optimiser owns, in
#: place of the published loss's (AdaIB's per-pair weighted and clipped loss, :mod:`.adaib`).
Backward = Callable[[torch.Tensor, torch.Tensor], None]


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


def bottleneck_loop(
    alpha: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    hidden: torch.Tensor,
    noise: torch.Tensor,
    valid: torch.Tensor,
    var: float,
    beta: float | torch.Tensor,
    score: Score,
    backward: Backward | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``noise.shape[1]`` steps of the bottleneck fit; return the last step's KL [N, T, D] (detached,
    masked by ``valid``), and per pair its compression and score [N] (detached).

    ``alpha`` [N, T, D] (requires grad, ``optimiser`` owns it), ``hidden`` R [N, T, D], ``noise``
    [N, steps, samples, T, D], ``valid`` [N, T] (1 for tokens that carry information), ``beta`` one
    number or one per pair [N] (the betas of a grid fitted as one batch). ``backward``:
    another loss's gradients instead of the published ``beta * compression - score`` (default)."""
    n, steps, samples, t, d = noise.shape
    elements = valid.sum(1) * d  # per pair: the mean of the KL runs over its own tokens only
    std = var**0.5
    kl = compression = fit = None
    for step in range(steps):
        lam = torch.sigmoid(alpha)
        log_one_minus = F.logsigmoid(-alpha)
        lam_r = lam * hidden
        kl = kl_to_prior(lam_r, log_one_minus, var)  # [N, T, D]
        # Z = lam R + (1 - lam) sqrt(var) eps, for every noise copy: [N, S, T, D]
        z = torch.addcmul(lam_r[:, None], (torch.exp(log_one_minus) * std)[:, None], noise[:, step])
        fit = score(z.reshape(n * samples, t, d)).view(n, samples).mean(1)
        compression = (kl * valid[..., None]).sum((1, 2)) / elements
        if backward is None:
            loss = (beta * compression - fit).sum()  # pairs are independent: sum of per-pair losses
            (grad,) = torch.autograd.grad(loss, alpha)
            alpha.grad = grad
        else:
            backward(compression, fit)
        optimiser.step()
    if kl is None or compression is None or fit is None:
        raise ValueError("the bottleneck fit ran no step: steps must be positive")
    # the attribution: the KL of the last step's forward pass, as in the paper
    return kl.detach() * valid[..., None], compression.detach(), fit.detach()


def fit_once(
    hidden: torch.Tensor,
    score: Score,
    *,
    beta: float,
    var: float,
    steps: int,
    lr: float,
    samples: int,
    init_alpha: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One eager fit on fresh state (alpha = ``init_alpha``, Adam, each pair's noise from its own
    generator seeded ``seed``, as :class:`m2ib.methods.m2ib.BottleneckFit` draws it); returns
    the KL map [N, T] (summed over channels), compression [N] and score [N]."""
    device = hidden.device
    n, t, d = hidden.shape
    noise = torch.empty(n, steps, samples, t, d, device=device)
    for i, g in enumerate(noise_generators(device, seed, n)):
        torch.randn(steps, samples, t, d, generator=g, device=device, out=noise[i])
    alpha = torch.full((n, t, d), float(init_alpha), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr, fused=device.type == "cuda")
    valid = torch.ones(n, t, device=device)
    kl, compression, fit = bottleneck_loop(alpha, optimiser, hidden.float(), noise, valid, var, beta, score)
    return kl.sum(-1), compression, fit


__all__ = ["Backward", "Score", "bottleneck_loop", "fit_once", "kl_to_prior", "noise_generators"]
