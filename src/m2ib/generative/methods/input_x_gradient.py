"""Input x gradient on an answer: each image token's state times the answer log-likelihood's gradient there.

Shrikumar, Greenside, Shcherbina, Kundaje, "Not Just a Black Box: Learning Important Features
Through Propagating Activation Differences", 2016, https://arxiv.org/abs/1605.01713 (the
"gradient * input" baseline; also Ancona et al., ICLR 2018, https://arxiv.org/abs/1711.06104)

Definition implemented, for the image-token states ``s_k`` [D] where they enter the language
model and ``logL`` the answer's summed log-likelihood:

    score_k = sum_c s_k[c] * d logL / d s_k[c]

Signed (a first-order estimate of logL's change when the token's state is set to zero); not
clipped or made absolute. One forward and one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...methods.base import Settings
from ..base import GenerativeBackend, Query
from .base import AnswerMethod, AnswerScores, register
from .common import state_gradient


@dataclass(frozen=True)
class InputXGradientSettings(Settings):
    """Input x gradient has no setting of its own (``seed`` is unused: it is deterministic).

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
    """


@register
class AnswerInputXGradient(AnswerMethod):
    """Sum over channels of state x gradient, per image token."""

    name = "input_x_gradient"
    title = "Input x gradient"
    paper = "https://arxiv.org/abs/1605.01713"
    Settings = InputXGradientSettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: InputXGradientSettings) -> AnswerScores:
        states, grad, value = state_gradient(backend, query)
        return AnswerScores((states * grad).sum(-1), {"log_likelihood": value})
