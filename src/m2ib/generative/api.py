"""explain_answer(): M2IB's map of a generative VLM's answer, in one call."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..inputs import load_image
from .base import GENERATIVE_FAMILIES, GenerativeBackend, generative_backend
from .m2ib import AnswerM2IBSettings, fit_answer
from .result import AnswerExplanation


def _family_name(backend: GenerativeBackend) -> str:
    return next((f.name for f in GENERATIVE_FAMILIES.values() if f.recognises(backend.model)), "")


def explain_answer(
    model: torch.nn.Module | GenerativeBackend,
    image: Any,
    prompt: str,
    answer: str | None = None,
    *,
    processor: Any = None,
    max_new_tokens: int = 32,
    **settings: Any,
) -> AnswerExplanation:
    """Which regions of ``image`` a generative VLM needs to give ``answer`` to ``prompt``.

    ``model``: a supported transformers model (``m2ib.generative.GENERATIVE_FAMILIES``) with its
    ``processor``, or a :class:`GenerativeBackend`. ``prompt`` holds the image placeholder once
    (LLaVA: ``<image>``), in the model's own chat format. ``answer``: the text to explain, teacher-
    forced after the prompt; ``None`` explains the model's own greedy answer (``max_new_tokens``
    at most), recorded as ``answer_source="generated"``. ``settings``: M2IB's
    (:class:`AnswerM2IBSettings`: beta, var, steps, lr, samples, init_alpha, seed; per_word: one map
    per answer word too; prompt_side, prompt_layer: a score per prompt word).
    """
    s = AnswerM2IBSettings(**settings)  # bad settings: one line, before any model work
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InputError(f"the answer {answer!r} is empty: give the text to explain, or None for the model's own")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    backend = generative_backend(model, processor)
    backend.check_prompt(prompt)
    picture, _ = load_image(image)
    source = "given"
    if answer is None:
        answer, source = backend.generate(picture, prompt, max_new_tokens), "generated"
        if not answer.strip():
            raise InputError("the model's own answer is empty: pass answer=TEXT to explain a given answer")
    query = backend.prepare(picture, prompt, answer)
    fit = fit_answer(backend, query, s)
    tokens = backend.tokenizer.convert_ids_to_tokens(query.answer_ids.tolist())
    return AnswerExplanation(
        prompt=prompt,
        answer=answer,
        answer_source=source,
        answer_tokens=[str(t) for t in tokens],
        image=query.display.cpu(),
        image_map=fit.image_map,
        grid_map=fit.grid_map,
        token_scores=fit.token_scores,
        family=_family_name(backend),
        model=str(getattr(getattr(backend.model, "config", None), "_name_or_path", "") or type(backend.model).__name__),
        settings=s.as_dict(),
        info=fit.info,
        **fit.fields(),  # the per-word maps and the prompt's word scores, when fitted
    )


__all__ = ["explain_answer"]
