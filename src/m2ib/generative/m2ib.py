"""M2IB on a generative VLM's answer.

The published bottleneck (Wang, Rudner, Wilson, NeurIPS 2023, https://arxiv.org/abs/2312.17174),
run by the same core as the CLIP path (:func:`m2ib.methods.bottleneck.bottleneck_loop`), with two
changes of place and target that a generative model forces:

* R is the image-token states where they enter the language model (LLaVA: the projector's
  output), [K, D], one alpha per token and channel;
* the fit term is the summed log-likelihood of the teacher-forced answer's tokens given the image
  and the prompt, ``log p(answer | Z, prompt)``, instead of a cosine to the other modality's
  embedding: the loss is ``beta * mean KL - mean_copies log p(answer | Z, prompt)``.

Everything else is the paper's: Z = lam R + (1 - lam) sqrt(var) eps, KL to N(0, var), Adam with
lr 1, 10 steps, 10 noise copies, alpha starting at 5, the last step's KL summed over channels as
the token scores. Those scores are placed on the image grid (tokens with no pixel are left out),
upsampled bilinearly to the model's input size and min-max normalised.

Scale: a log-likelihood is summed over the answer's tokens (nats), not bounded like a cosine, so
beta = 0.1 weighs compression less against it than in the CLIP setting; beta is a setting, not
yet tuned for these models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..maps import minmax
from ..methods.base import Settings, setting
from ..methods.bottleneck import Score, fit_once
from ..methods.memory import require_memory
from ..settings import check_number, check_positive_int
from .base import GenerativeBackend, Query, evaluation_mode


@dataclass(frozen=True)
class AnswerM2IBSettings(Settings):
    """M2IB's settings for an answer; defaults are the paper's (CLIP ViT-B/32)."""

    beta: float = setting(0.1, "weight of the compression (KL) term")
    var: float = setting(1.0, "variance of the noise and of the prior N(0, var)")
    steps: int = setting(10, "optimisation steps of the bottleneck")
    lr: float = setting(1.0, "Adam learning rate")
    samples: int = setting(10, "noise copies per step")
    init_alpha: float = setting(5.0, "initial value of alpha (lam = sigmoid(alpha) starts near 1)")

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.samples, "samples")
        check_number(self.lr, "lr", strict=True)
        check_number(self.var, "var", strict=True)
        check_number(self.beta, "beta")
        check_number(self.init_alpha, "init_alpha")


def answer_score(backend: GenerativeBackend, query: Query) -> Score:
    """z [copies, K, D] -> log p(answer | z, prompt) [copies]: the fit term of the bottleneck."""
    return lambda z: backend.rest(query, z)


@dataclass(frozen=True)
class AnswerFit:
    """What one fit gives: per-token KL [K], the map on the grid [rows, cols], the upsampled map
    [H, W] (min-max), and the numbers of the fit."""

    token_scores: torch.Tensor
    grid_map: torch.Tensor
    image_map: torch.Tensor
    info: dict[str, float]


def grid_scores(scores: torch.Tensor, cells: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Token scores [K] placed on the grid [rows, cols] (summed per cell; tokens at cell -1 left out)."""
    keep = cells >= 0
    out = torch.zeros(grid[0] * grid[1], dtype=scores.dtype, device=scores.device)
    out.index_add_(0, cells[keep], scores[keep])
    return out.view(grid)


def upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The grid map bilinearly upsampled to ``size`` and min-max normalised (as the CLIP path does)."""
    big = F.interpolate(grid_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return minmax(big[None])[0]


# Live float tensors of the language model's width per token and noise copy in one decoder block, kept
# for the backward pass (norms, q/k/v, attention output, residuals, the gated MLP's three wide
# tensors): a generous bound, as the CLIP path's ACTIVATIONS_PER_BLOCK.
ACTIVATIONS_PER_BLOCK = 24


def memory_needed(backend: GenerativeBackend, query: Query, s: AnswerM2IBSettings) -> int:
    """Bytes one fit needs at its peak, roughly: the noise of every step, and one step's activations
    on ``samples`` copies of the whole sequence through every block of the language model."""
    text = backend.model.config.get_text_config()
    width, blocks = int(text.hidden_size), int(text.num_hidden_layers)
    length, tokens = int(query.input_ids.shape[1]), int(query.image_positions.numel())
    noise = s.steps * s.samples * tokens * width
    activations = s.samples * length * width * (ACTIVATIONS_PER_BLOCK * blocks + 4)
    logits = s.samples * int(query.answer_ids.numel()) * int(text.vocab_size) * 2
    return 4 * (noise + activations + logits)


def fit_answer(backend: GenerativeBackend, query: Query, s: AnswerM2IBSettings) -> AnswerFit:
    """Fit M2IB's bottleneck on ``query``'s image-token states for its answer's log-likelihood."""
    require_memory(
        memory_needed(backend, query, s),
        backend.device,
        f"M2IB on an answer with samples={s.samples} ({int(query.input_ids.shape[1])} tokens a copy)",
        "lower samples",
        settings=("samples",),
    )
    with evaluation_mode(backend.model):
        with torch.no_grad():
            hidden = backend.image_states(query).float()  # [1, K, D]
            plain = float(backend.rest(query, hidden)[0])
        kl_map, compression, fit = fit_once(
            hidden,
            answer_score(backend, query),
            beta=s.beta,
            var=s.var,
            steps=s.steps,
            lr=s.lr,
            samples=s.samples,
            init_alpha=s.init_alpha,
            seed=s.seed,
        )
    token_scores = kl_map[0].detach().cpu()
    if not torch.isfinite(token_scores).all():
        raise InputError(
            f"M2IB's fit on the answer diverged (non-finite KL): lower lr (now {s.lr}) or raise var (now {s.var})"
        )
    grid_map = grid_scores(token_scores, query.cells.cpu(), query.grid)
    image_map = upsample(grid_map, (int(query.display.shape[-2]), int(query.display.shape[-1])))
    info = {
        "log_likelihood": plain,  # the answer's log-likelihood without the bottleneck
        "log_likelihood_bottlenecked": float(fit[0]),  # at the last step, mean over the noise copies
        "compression": float(compression[0]),
    }
    return AnswerFit(token_scores, grid_map, image_map, info)


__all__ = ["AnswerFit", "AnswerM2IBSettings", "answer_score", "fit_answer", "grid_scores", "upsample"]
