"""Attention x gradient relevancy on an answer: LVLM-Interpret's "relevancy", the generic rule of
Chefer et al. run over the language model's self-attention.

Stan et al., "LVLM-Interpret: An Interpretability Tool for Large Vision-Language Models", 2024,
https://arxiv.org/abs/2404.03118 (code: IntelLabs/lvlm-interpret, ``utils_relevancy.py``:
``construct_relevancy_map``, ``handle_self_attention_image``, ``avg_heads``, ``handle_residual``),
which applies Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal
and Encoder-Decoder Transformers", ICCV 2021, https://arxiv.org/abs/2103.15679 (rules 5 and 6,
normalisation eqs. 8-9).

Definition implemented, over the language model's blocks ``b = 1..B`` with attention ``A_b``
[heads, L, L] (the whole teacher-forced sequence, causal) and a target ``t``:

    R = I_L;  for b = 1..B:  R += mean_heads( ReLU( dt/dA_b * A_b ) ) @ R
    normalised (setting ``normalize``, on by default as LVLM-Interpret's ``apply_normalization``):
        R := (R - I) / rowsum(R - I) + I   (a zero row sum is left as it is)

and a token's score is its column in the row of the position that predicts the answer token
(position ``answer_start - 1 + a`` for answer token ``a``: the row LVLM-Interpret reads as
``R[-1]`` while generating). Setting ``target``:

* ``token_logit`` (default, LVLM-Interpret's): for each answer token ``a``, ``t`` is that token's
  logit (pre-softmax) at its position, one backward each, and the score is the mean over the
  answer's tokens of row ``start - 1 + a`` (LVLM-Interpret averages token maps into word maps; the
  whole answer is taken here as one "word");
* ``log_likelihood``: one backward of the answer's summed log-likelihood, the mean of the rows of
  the answer-predicting positions.

One deviation from LVLM-Interpret's code, forced by teacher forcing: it records attention while
generating with a cache, so the rows of earlier positions in ``A_b`` come from earlier steps'
gradients; here every row of ``A_b`` and its gradient come from one forward of the whole sequence
(Chefer et al.'s rule as written). The attention weights are read with the language model in
eager attention for the call (its own implementation restored after) and forward hooks on its
attention modules (always removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...methods.base import Settings
from ...settings import check_choice, setting
from ..base import GenerativeBackend, Query, answer_log_likelihood
from .base import AnswerMethod, AnswerScores, captured, decoder_layers, eager_attention, plain_states, register

TARGETS = ("token_logit", "log_likelihood")


@dataclass(frozen=True)
class RelevancySettings(Settings):
    """Attention x gradient relevancy settings (LVLM-Interpret's defaults).

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
        target: What is differentiated: token_logit (LVLM-Interpret: each answer token's logit, one
            backward per token, the rows averaged) or log_likelihood (the answer's summed log-
            likelihood, one backward); default ``'token_logit'``.
        normalize: Divide each relevancy row by its sum without the identity (Chefer et al. eqs.
            8-9; LVLM-Interpret's default); default ``True``.
    """

    target: str = setting(
        "token_logit",
        "what is differentiated: token_logit (LVLM-Interpret: each answer token's logit, one backward per "
        "token, the rows averaged) or log_likelihood (the answer's summed log-likelihood, one backward)",
        choices=TARGETS,
    )
    normalize: bool = setting(
        True,
        "divide each relevancy row by its sum without the identity (Chefer et al. eqs. 8-9; LVLM-Interpret's default)",
    )

    def validate(self) -> None:
        super().validate()
        check_choice(self.target, "target", TARGETS)


def relevancy_matrix(
    attentions: list[torch.Tensor], grads: tuple[torch.Tensor | None, ...], normalize: bool
) -> torch.Tensor:
    """R [L, L] from each block's attention [1, H, L, L] and its gradient (rules 5 and 6, eqs. 8-9)."""
    length = attentions[0].shape[-1]
    eye = torch.eye(length, device=attentions[0].device)
    r = eye.clone()
    for attn, grad in zip(attentions, grads, strict=True):
        grad = torch.zeros_like(attn) if grad is None else grad  # a block the target does not reach
        cam = (grad[0].float() * attn.detach()[0].float()).clamp(min=0).mean(0)
        r = r + cam @ r
    if normalize:
        rest = r - eye
        sums = rest.sum(-1, keepdim=True)
        r = rest / torch.where(sums == 0, torch.ones_like(sums), sums) + eye
    return r


@register
class Relevancy(AnswerMethod):
    """Gradient-weighted attention, accumulated over the language model's blocks (LVLM-Interpret)."""

    name = "relevancy"
    title = "Attention x gradient relevancy (LVLM-Interpret)"
    paper = "https://arxiv.org/abs/2404.03118"
    Settings = RelevancySettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: RelevancySettings) -> AnswerScores:
        attention_modules = [layer.self_attn for layer in decoder_layers(backend)]
        states = plain_states(backend, query)
        with eager_attention(backend.model), captured(attention_modules, pick=1) as attentions:
            logits = backend.answer_logits(query, backend.embeds_with(query, states))  # [1, A, V]
        if len(attentions) != len(attention_modules) or any(a is None for a in attentions):
            raise ValueError(f"{type(backend.model).__name__}: its attention modules gave no attention weights")
        ids = query.answer_ids
        rows = torch.arange(ids.numel(), device=ids.device) + query.answer_start - 1
        value = answer_log_likelihood(logits, ids)[0]
        if settings.target == "log_likelihood":
            grads = torch.autograd.grad(value, attentions, allow_unused=True)
            r = relevancy_matrix(attentions, grads, settings.normalize)
            scores = r[rows][:, query.image_positions].mean(0)
        else:
            scores = torch.zeros(query.image_positions.numel(), device=logits.device)
            for a in range(ids.numel()):
                last = a == ids.numel() - 1
                grads = torch.autograd.grad(logits[0, a, ids[a]], attentions, retain_graph=not last, allow_unused=True)
                r = relevancy_matrix(attentions, grads, settings.normalize)
                scores = scores + r[rows[a], query.image_positions]
            scores = scores / ids.numel()
        return AnswerScores(scores, {"log_likelihood": float(value.detach())})
