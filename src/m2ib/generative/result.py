"""AnswerExplanation: M2IB's map of one generative VLM's answer to one prompt about one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..results import Result, short

#: Where the explained answer came from: given by the caller, or the model's own greedy answer.
ANSWER_SOURCES = ("given", "generated")


@dataclass(repr=False)
class AnswerExplanation(Result):
    """Which image regions the answer needs (CPU float tensors): what
    :func:`m2ib.explain_answer <m2ib.generative.api.explain_answer>` returns.

    A :class:`~m2ib.results.Result`: ``arrays()`` (``image_map``, ``grid_map``, ``token_scores``),
    ``to_dict()``, ``figure()`` (the map over the image, the answer as the title) and
    ``save(directory, stem="answer")``.

    Attributes:
        prompt: the prompt as given.
        answer: the answer explained.
        answer_source: ``"given"`` (passed as ``answer``) or ``"generated"`` (the model's own).
        answer_tokens: the teacher-forced answer's tokens, as the tokenizer reads them.
        image: [3, H, W] in [0, 1], the image as the model saw it.
        image_map: [H, W] in [0, 1]: ``grid_map`` upsampled bilinearly and min-max normalised.
        grid_map: [rows, cols]: the KL of the image tokens on the image grid (nats).
        token_scores: [K]: the KL of each image token, in sequence order.
        method: ``"m2ib"``.
        family: the generative family (``"llava"``, ``"paligemma"``, ...).
        model: the model's name (its ``_name_or_path``, else its class).
        settings: every setting used (:class:`~m2ib.generative.m2ib.AnswerM2IBSettings`).
        info: the answer's log-likelihood, bottlenecked and not, and the fit's compression.

    Examples:
        >>> import sys, tempfile, m2ib
        >>> sys.path.insert(0, "tests/generative")  # a random tiny LLaVA, built offline
        >>> from tiny_llava import tiny_llava
        >>> model, processor = tiny_llava()
        >>> exp = m2ib.explain_answer(
        ...     model, "examples/scene3.png", "<image> what is in the image ?", answer="a red circle",
        ...     processor=processor, steps=3, samples=2,
        ... )
        >>> exp
        <AnswerExplanation m2ib of answer 'a red circle' to '<image> what is in the image ?'>
        >>> exp.answer_source, exp.family, sorted(exp.info)
        ('given', 'llava', ['compression', 'log_likelihood', 'log_likelihood_bottlenecked'])
        >>> sorted(exp.save(tempfile.mkdtemp()))  # answer.npz, answer.png, then answer.json
        ['json', 'npz', 'png']
    """

    prompt: str
    answer: str
    answer_source: str  # "given" or "generated" (see ANSWER_SOURCES)
    answer_tokens: list[str]  # the teacher-forced answer's tokens, as the tokenizer reads them
    image: torch.Tensor  # [3, H, W] in [0, 1]: the image as the model saw it
    image_map: torch.Tensor  # [H, W] in [0, 1]: grid_map upsampled and min-max normalised
    grid_map: torch.Tensor  # [rows, cols]: the KL of the image tokens on the image grid
    token_scores: torch.Tensor  # [K]: the KL of each image token, in sequence order
    method: str = "m2ib"
    family: str = ""
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)  # log-likelihoods and compression of the fit

    default_stem: ClassVar[str] = "answer"

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "image_map": self.image_map.numpy(),
            "grid_map": self.grid_map.numpy(),
            "token_scores": self.token_scores.numpy(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "answer",
            "method": self.method,
            "family": self.family,
            "model": self.model,
            "prompt": self.prompt,
            "answer": self.answer,
            "answer_source": self.answer_source,
            "answer_tokens": list(self.answer_tokens),
            "grid": list(self.grid_map.shape),
            "image_size": list(self.image.shape[-2:]),
            "settings": dict(self.settings),
            "info": dict(self.info),
        }

    def figure(self, boxes: list[tuple[float, float, float, float]] | None = None) -> Any:
        from ..viz.figure import explanation_figure

        title = f"answer: {short(self.answer, 80)}" + (" (generated)" if self.answer_source == "generated" else "")
        return explanation_figure(
            self.image, self.image_map, None, None, title=title, subtitle=short(self.prompt, 100), boxes=boxes
        )

    def summary(self) -> str:
        return f"{self.method} of answer {short(self.answer, 40)!r} to {short(self.prompt, 40)!r}"


__all__ = ["ANSWER_SOURCES", "AnswerExplanation"]
