"""Metrics of an answer's maps: deletion and insertion on the answer's log-likelihood, and a
pointing game on answer words that name an object.

* **Deletion** (Petsiuk et al., RISE, BMVC 2018, on image tokens instead of pixels): rank the
  image tokens by the map's token scores (highest first; equal scores in sequence order), replace
  the top ``k`` tokens' states by a baseline for ``k = round(j K / steps)``, ``j = 0 .. steps``, and
  take the target's **log-likelihood** (nats, summed over the target's tokens: the whole answer, or
  one word's tokens with the whole answer still teacher-forced) at each ``k``: the curve. Its area
  over the fraction ``k / K`` in [0, 1] (trapezoid): **lower is better** (the answer's likelihood
  falls fast when the tokens the map ranks first go).
* **Insertion**: start from every token at the baseline and put the top ``k`` back. Area: **higher
  is better**.
* ``baseline``: ``"zeros"`` (a zero state) or ``"mean"`` (the mean of the image's own token states,
  per channel). The states are those :meth:`GenerativeBackend.image_states` gives, where M2IB's
  bottleneck sits; each curve is one batched :meth:`GenerativeBackend.rest` (``batch_size`` rows a
  forward pass).
* **Pointing game** (Zhang et al., 2018): a word's map points at its object when the map's maximum
  (first argmax, row-major; NaN never wins) lies inside the object's ground-truth mask.

These are functions, not entries of :data:`m2ib.metrics.REGISTRY`: that registry measures CLIP
pairs through the CLIP seam (``Backend``, pair batches), which an answer does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..settings import check_positive_int
from .base import GenerativeBackend, Query, evaluation_mode
from .m2ib import answer_token_log_probs
from .result import AnswerExplanation

BASELINES = ("zeros", "mean")


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: the fractions ``k / K`` [n], the target's log-likelihood at
    each [n], and the area under it over the fractions."""

    fractions: torch.Tensor
    log_likelihood: torch.Tensor
    auc: float


def token_order(scores: torch.Tensor) -> torch.Tensor:
    """The image tokens, highest score first; equal scores keep their sequence order (stable)."""
    return torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices


def token_counts(tokens: int, steps: int) -> list[int]:
    """How many tokens are removed (or inserted) at each point: ``round(j * tokens / steps)``, j = 0 .. steps."""
    check_positive_int(steps, "steps")
    return [round(j * tokens / steps) for j in range(steps + 1)]


def baseline_state(states: torch.Tensor, baseline: str) -> torch.Tensor:
    """The state [1, 1, D] that stands for a removed token."""
    if baseline == "zeros":
        return torch.zeros_like(states[:, :1])
    if baseline == "mean":
        return states.mean(1, keepdim=True)
    raise InputError(f"baseline={baseline!r}: choose one of {', '.join(BASELINES)}")


def perturbed(
    states: torch.Tensor, order: torch.Tensor, counts: list[int], baseline: str, insertion: bool
) -> torch.Tensor:
    """[len(counts), K, D]: ``states`` [1, K, D] with the first ``k`` tokens of ``order`` at the
    baseline (deletion), or every token but those (insertion), for each ``k`` of ``counts``."""
    fill = baseline_state(states, baseline)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    k = torch.tensor(counts)[:, None]
    top = (rank[None] < k).to(states.device)  # [n, K]: among the first k
    gone = ~top if insertion else top
    return torch.where(gone[..., None], fill, states)


def target_log_likelihood(
    backend: GenerativeBackend, query: Query, states: torch.Tensor, tokens: list[int] | None, batch_size: int
) -> torch.Tensor:
    """The target's log-likelihood [N] with ``states`` [N, K, D] as the image tokens: the whole answer
    (``tokens=None``, :meth:`GenerativeBackend.rest`) or the answer tokens at indices ``tokens``."""
    check_positive_int(batch_size, "batch_size")
    out = []
    with torch.no_grad(), evaluation_mode(backend.model):
        for first in range(0, states.shape[0], batch_size):
            chunk = states[first : first + batch_size]
            if tokens is None:
                out.append(backend.rest(query, chunk).float().cpu())
            else:
                out.append(answer_token_log_probs(backend, query, chunk)[:, tokens].sum(-1).float().cpu())
    return torch.cat(out)


def answer_curve(
    backend: GenerativeBackend,
    query: Query,
    token_scores: torch.Tensor,
    *,
    insertion: bool = False,
    tokens: list[int] | None = None,
    steps: int = 20,
    baseline: str = "zeros",
    batch_size: int = 8,
) -> Curve:
    """The deletion (or ``insertion``) curve of the image tokens ranked by ``token_scores`` [K], for
    the whole answer (``tokens=None``) or the answer tokens at indices ``tokens`` (one word's)."""
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if baseline not in BASELINES:
        raise InputError(f"baseline={baseline!r}: choose one of {', '.join(BASELINES)}")
    with torch.no_grad(), evaluation_mode(backend.model):
        states = backend.image_states(query).float()
    if token_scores.numel() != states.shape[1]:
        raise InputError(f"{token_scores.numel()} token scores for {states.shape[1]} image tokens")
    counts = token_counts(int(states.shape[1]), steps)
    batch = perturbed(states, token_order(token_scores), counts, baseline, insertion)
    values = target_log_likelihood(backend, query, batch, tokens, batch_size)
    fractions = torch.tensor(counts, dtype=torch.float64) / states.shape[1]
    return Curve(fractions.float(), values, float(torch.trapezoid(values.double(), fractions)))


def word_index(exp: AnswerExplanation, word: str | int) -> int:
    """The index of ``word`` among the explanation's answer words (an index, or its text: the first
    word equal to it, case and surrounding punctuation ignored); one line when there is none."""
    if not exp.words:
        raise InputError("the explanation has no per-word maps: explain with per_word=True")
    if isinstance(word, int) and not isinstance(word, bool):
        if not 0 <= word < len(exp.words):
            raise InputError(f"word {word} is out of range: the answer has {len(exp.words)} words")
        return word
    plain = [w.strip(".,;:!?\"'()").lower() for w in exp.words]
    key = str(word).strip(".,;:!?\"'()").lower()
    if key not in plain:
        raise InputError(f"{word!r} is not a word of the answer ({', '.join(exp.words)})")
    return plain.index(key)


def explanation_curves(
    backend: GenerativeBackend,
    query: Query,
    exp: AnswerExplanation,
    word: str | int | None = None,
    *,
    steps: int = 20,
    baseline: str = "zeros",
    batch_size: int = 8,
) -> dict[str, Curve]:
    """``{"deletion": ..., "insertion": ...}`` of ``exp``'s whole-answer map (``word=None``) or of one
    word's map with that word's log-likelihood as the target. ``query`` is the explained one
    (``backend.prepare(image, exp.prompt, exp.answer)``)."""
    if query.answer_ids.numel() != len(exp.answer_tokens):
        raise InputError("the query's answer is not the explanation's: prepare it from exp.prompt and exp.answer")
    scores, tokens = exp.token_scores, None
    if word is not None:
        i = word_index(exp, word)
        if exp.word_token_scores is None:
            raise InputError("the explanation has no per-word maps: explain with per_word=True")
        scores, tokens = exp.word_token_scores[i], exp.word_tokens[i]
    return {
        kind: answer_curve(
            backend,
            query,
            scores,
            insertion=kind == "insertion",
            tokens=tokens,
            steps=steps,
            baseline=baseline,
            batch_size=batch_size,
        )
        for kind in ("deletion", "insertion")
    }


def pointing_game(image_map: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when ``image_map``'s maximum (first argmax, row-major; NaN never wins) lies in ``mask``
    (bool, the map's shape [H, W])."""
    if image_map.shape != mask.shape:
        raise InputError(f"map {tuple(image_map.shape)} and mask {tuple(mask.shape)} differ in shape")
    flat = torch.nan_to_num(image_map.detach().float().flatten(), nan=float("-inf"))
    return bool(mask.bool().flatten()[int(torch.argmax(flat))])


def word_pointing(exp: AnswerExplanation, word: str | int, mask: torch.Tensor) -> bool:
    """The pointing game of answer ``word``'s map against its object's ``mask`` [H, W] (the model's
    input size, as ``exp.image``)."""
    i = word_index(exp, word)
    if exp.word_maps is None:
        raise InputError("the explanation has no per-word maps: explain with per_word=True")
    return pointing_game(exp.word_maps[i], mask)


__all__ = [
    "BASELINES",
    "Curve",
    "answer_curve",
    "explanation_curves",
    "pointing_game",
    "token_counts",
    "token_order",
    "word_index",
    "word_pointing",
]
