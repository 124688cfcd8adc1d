"""explain_answer(): the map of a generative VLM's answer (M2IB, or another answer method), in one call."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..inputs import load_image
from .base import GENERATIVE_FAMILIES, GenerativeBackend, generative_backend
from .m2ib import grid_scores, upsample
from .methods import answer_method
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
    method: str = "m2ib",
    **settings: Any,
) -> AnswerExplanation:
    """Which regions of ``image`` a generative VLM needs to give ``answer`` to ``prompt``.

    ``model``: a supported transformers model (``m2ib.generative.GENERATIVE_FAMILIES``) with its
    ``processor``, or a :class:`GenerativeBackend`. ``prompt`` holds the image placeholder once
    (LLaVA: ``<image>``), in the model's own chat format. ``answer``: the text to explain, teacher-
    forced after the prompt; ``None`` explains the model's own greedy answer (``max_new_tokens``
    at most), recorded as ``answer_source="generated"``. ``method``: an answer method
    (``m2ib.generative.methods.ANSWER_METHODS``: m2ib, saliency, input_x_gradient, llava_cam,
    relevancy, occlusion, rise); ``settings``: its settings (M2IB's :class:`AnswerM2IBSettings`:
    beta, var, steps, lr, samples, init_alpha, seed; per_word: one map per answer word too;
    prompt_side, prompt_layer: a score per prompt word).
    """
    explainer = answer_method(method)
    s = explainer.make_settings(**settings)  # bad settings: one line, before any model work
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
    fit = explainer.explain(backend, query, s)
    grid_map = grid_scores(fit.scores, query.cells.cpu(), query.grid)
    image_map = upsample(grid_map, (int(query.display.shape[-2]), int(query.display.shape[-1])))
    tokens = backend.tokenizer.convert_ids_to_tokens(query.answer_ids.tolist())
    return AnswerExplanation(
        prompt=prompt,
        answer=answer,
        answer_source=source,
        answer_tokens=[str(t) for t in tokens],
        image=query.display.cpu(),
        image_map=image_map,
        grid_map=grid_map,
        token_scores=fit.scores,
        method=explainer.name,
        family=_family_name(backend),
        model=str(getattr(getattr(backend.model, "config", None), "_name_or_path", "") or type(backend.model).__name__),
        settings=s.as_dict(),
        info=fit.info,
        **fit.fields,  # M2IB's per-word maps and prompt word scores, when fitted
    )


__all__ = ["explain_answer"]
