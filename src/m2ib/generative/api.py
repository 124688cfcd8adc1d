"""explain_answer(): the map of a generative VLM's answer (M2IB, or another answer method), in one call."""

from __future__ import annotations

import os
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
    model: str | os.PathLike | torch.nn.Module | GenerativeBackend,
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

    M2IB (Wang, Rudner, Wilson, NeurIPS 2023, https://arxiv.org/abs/2312.17174) moved to a
    generative model: the bottleneck sits on the image-token states where they enter the
    language model (LLaVA: the projector's output, [K, D] for K image tokens), and its fit term
    is the teacher-forced answer's log-likelihood instead of a cosine (:mod:`m2ib.generative.m2ib`,
    docs/generative.md). The model is never modified.

    Args:
        model: a built-in name (``"shapes-vqa"``; ``m2ib.list_models(generative=True)``), a
            ``save_pretrained`` folder or a hub id (loaded with its own processor); or a supported
            transformers model (``m2ib.generative.GENERATIVE_FAMILIES``: LLaVA-1.5, LLaVA-NeXT,
            LLaVA-OneVision, PaliGemma 1 and 2, Idefics3, SmolVLM, Qwen2-VL, Qwen2.5-VL, InternVL;
            ``m2ib list`` prints them) with its ``processor``; or a
            :class:`~m2ib.generative.base.GenerativeBackend`.
        image: a path, a PIL image or an image tensor, as :func:`m2ib.explain` takes one.
        prompt: the question or instruction, in the model's own chat format, with the image
            placeholder once where the family asks for one (LLaVA: ``<image>``; PaliGemma takes
            plain text; docs/generative.md gives each family's form). A prompt the family cannot
            read is one line, before any model work.
        answer: the text to explain, teacher-forced after the prompt; default ``None``: the
            model's own greedy answer (``max_new_tokens`` at most), recorded as
            ``answer_source="generated"``.
        processor: the model's processor (needed with a transformers model); default ``None``.
        max_new_tokens: the longest answer generated when ``answer`` is None; default ``32``.
        method: the answer method, default ``"m2ib"``; the others are baselines
            (``m2ib.generative.methods.ANSWER_METHODS``: saliency, input_x_gradient, llava_cam,
            relevancy, occlusion, rise; docs/generative.md gives each one's source).
        **settings: the method's settings. M2IB's (:class:`~m2ib.generative.m2ib.AnswerM2IBSettings`):
            ``beta`` (default 0.1), ``var`` (1.0), ``steps`` (10), ``lr`` (1.0), ``samples`` (10),
            ``init_alpha`` (5.0), ``seed`` (0): the paper's values; ``per_word`` (True: one map per
            answer word too), ``prompt_side`` and ``prompt_layer`` (a score per prompt word),
            ``image_layer`` (0: the bottleneck on the projector's output; l: after language-model block l). Bad
            settings are one line, before any model work.

    Returns:
        An :class:`~m2ib.generative.result.AnswerExplanation`: ``image_map`` [H, W] at the model's
        input size, ``grid_map`` [rows, cols] and ``token_scores`` [K] (M2IB: the KL per image
        token); with M2IB's ``per_word``, ``words`` and ``word_maps`` [W, H, W'] too.

    Examples:
        A random tiny LLaVA (the tests' builder: 8 px images, a 4 x 4 grid of image tokens),
        three steps of two noise copies to keep it quick:

        >>> import sys, m2ib
        >>> sys.path.insert(0, "tests/generative")  # run from the repository root
        >>> from tiny_llava import tiny_llava
        >>> model, processor = tiny_llava()
        >>> exp = m2ib.explain_answer(
        ...     model, "examples/scene3.png", "<image> what is in the image ?", answer="a red circle",
        ...     processor=processor, steps=3, samples=2,
        ... )
        >>> exp.grid_map.shape, exp.image_map.shape, exp.token_scores.shape, exp.answer_tokens
        (torch.Size([4, 4]), torch.Size([8, 8]), torch.Size([16]), ['a', 'red', 'circle'])

        On LLaVA-1.5 (a download of about 14 GB):

        >>> from transformers import AutoProcessor, LlavaForConditionalGeneration  # doctest: +SKIP
        >>> name = "llava-hf/llava-1.5-7b-hf"  # doctest: +SKIP
        >>> model = LlavaForConditionalGeneration.from_pretrained(name)  # doctest: +SKIP
        >>> exp = m2ib.explain_answer(  # doctest: +SKIP
        ...     model, "examples/scene3.png", "USER: <image>\\nWhat shape is orange? ASSISTANT:",
        ...     processor=AutoProcessor.from_pretrained(name),
        ... )
        >>> exp.answer_source  # doctest: +SKIP
        'generated'
    """
    explainer = answer_method(method)
    s = explainer.make_settings(**settings)  # bad settings: one line, before any model work
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InputError(f"the answer {answer!r} is empty: give the text to explain, or None for the model's own")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(model, (str, os.PathLike)):  # a name: the shipped shapes-vqa, a folder or a hub id
        from .loading import load_generative

        backend = load_generative(str(model))
    else:
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
    grid_map = grid_scores(fit.scores, query.cells.cpu(), query.grid, query.spread)
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
