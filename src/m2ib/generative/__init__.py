"""Generative vision-language models (LLaVA, ...): M2IB's map of an answer.

``explain_answer(model, image, prompt, answer=TEXT, processor=...)`` fits M2IB's bottleneck on
the image-token states where they enter the language model, for the answer's log-likelihood.
The seam a family implements is :class:`GenerativeBackend` (:mod:`.base`); each family is one
file that registers a :class:`GenerativeFamily` in :data:`GENERATIVE_FAMILIES`. See docs/generative.md.
"""

from __future__ import annotations

from . import idefics3, internvl, llava, llava_next, paligemma, qwen2vl  # noqa: F401  (register the families)
from .api import explain_answer
from .base import GENERATIVE_FAMILIES, GenerativeBackend, GenerativeFamily, Query, generative_backend, register
from .m2ib import AnswerM2IBSettings, fit_answer
from .result import AnswerExplanation

__all__ = [
    "GENERATIVE_FAMILIES",
    "AnswerExplanation",
    "AnswerM2IBSettings",
    "GenerativeBackend",
    "GenerativeFamily",
    "Query",
    "explain_answer",
    "fit_answer",
    "generative_backend",
    "register",
]
