"""Gradient saliency on an answer: how much an infinitesimal change of each image token's state
moves the answer's log-likelihood.

Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR 2014 workshop, https://arxiv.org/abs/1312.6034

Definition implemented, for the image-token states ``s_k`` [D] where they enter the language
model (LLaVA: the projector's output) and ``logL`` the answer's summed log-likelihood, teacher-forced:

    score_k = || d logL / d s_k ||_2      (the L2 norm over the D channels, one value per token)

The paper takes |gradient| per input pixel (max over colour channels); here the input units are
the image tokens, and a token's channels are reduced by their L2 norm (as m2ib's text-side saliency
reduces a token embedding's channels). One forward and one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...methods.base import Settings
from ..base import GenerativeBackend, Query
from .base import AnswerMethod, AnswerScores, register
from .common import state_gradient


@dataclass(frozen=True)
class AnswerSaliencySettings(Settings):
    """Gradient saliency has no setting of its own (``seed`` is unused: it is deterministic).

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
    """


@register
class AnswerSaliency(AnswerMethod):
    """L2 norm of the answer log-likelihood's gradient at each image token's state."""

    name = "saliency"
    title = "Gradient saliency"
    paper = "https://arxiv.org/abs/1312.6034"
    Settings = AnswerSaliencySettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: AnswerSaliencySettings) -> AnswerScores:
        _, grad, value = state_gradient(backend, query)
        return AnswerScores(grad.norm(dim=-1), {"log_likelihood": value})
