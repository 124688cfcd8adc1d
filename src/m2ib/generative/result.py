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
        info: the answer's log-likelihood, bottlenecked and not, and the fit's compression (and the
            prompt side's, when fitted).

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
        >>> exp.answer_source, exp.family, exp.words
        ('given', 'llava', ['a', 'red', 'circle'])
        >>> sorted(exp.info)  # doctest: +NORMALIZE_WHITESPACE
        ['compression', 'log_likelihood', 'log_likelihood_bottlenecked', 'prompt_compression',
         'prompt_log_likelihood_bottlenecked']
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
    # per answer word (``per_word``; words as m2ib.generative.m2ib.word_groups makes them)
    words: list[str] = field(default_factory=list)
    word_tokens: list[list[int]] = field(default_factory=list)  # each word's indices into answer_tokens
    word_maps: torch.Tensor | None = None  # [W, H, W] in [0, 1]: each word's image map
    word_grid_maps: torch.Tensor | None = None  # [W, rows, cols]
    word_token_scores: torch.Tensor | None = None  # [W, K]
    # the prompt side (``prompt_side``): each prompt word and the mean KL of its tokens
    prompt_words: list[str] = field(default_factory=list)
    prompt_scores: torch.Tensor | None = None  # [P]

    default_stem: ClassVar[str] = "answer"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "image_map": self.image_map.numpy(),
            "grid_map": self.grid_map.numpy(),
            "token_scores": self.token_scores.numpy(),
        }
        extra = {
            "word_maps": self.word_maps,
            "word_grid_maps": self.word_grid_maps,
            "word_token_scores": self.word_token_scores,
            "prompt_scores": self.prompt_scores,
        }
        return {**out, **{k: v.numpy() for k, v in extra.items() if v is not None}}

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
            "words": list(self.words),
            "word_tokens": [list(t) for t in self.word_tokens],
            "prompt_words": list(self.prompt_words),
            "prompt_scores": [] if self.prompt_scores is None else [float(v) for v in self.prompt_scores],
        }

    def figure(self, boxes: list[tuple[float, float, float, float]] | None = None) -> Any:
        title = f"answer: {short(self.answer, 80)}" + (" (generated)" if self.answer_source == "generated" else "")
        if not self.words and not self.prompt_words:  # the whole answer's map only
            from ..viz.figure import explanation_figure

            return explanation_figure(
                self.image, self.image_map, None, None, title=title, subtitle=short(self.prompt, 100), boxes=boxes
            )
        panels = [("input", self.image), ("whole answer", overlay_of(self.image, self.image_map))]
        maps = list(self.word_maps) if self.word_maps is not None else []
        panels += [(f"\u201c{w}\u201d", overlay_of(self.image, m)) for w, m in zip(self.words, maps, strict=True)]
        from ..viz.canvas import quiet_missing_glyphs

        draw = quiet_missing_glyphs(answer_figure)  # no warning per glyph a font lacks (as the other figures)
        return draw(panels, self.prompt_words, self.prompt_scores, title, short(self.prompt, 100), boxes)

    def summary(self) -> str:
        return f"{self.method} of answer {short(self.answer, 40)!r} to {short(self.prompt, 40)!r}"


#: Image panels in one row of the answer figure (the input, the whole answer, then the words).
PANELS_PER_ROW = 6


def overlay_of(image: torch.Tensor, image_map: torch.Tensor) -> torch.Tensor:
    from ..viz.overlay import overlay

    return overlay(image, image_map)


def answer_figure(
    panels: list[tuple[str, torch.Tensor]],
    prompt_words: list[str],
    prompt_scores: torch.Tensor | None,
    title: str,
    subtitle: str,
    boxes: list[tuple[float, float, float, float]] | None,
    dpi: int = 150,
) -> Any:
    """Rows of image panels, each under its heading (the input, the whole answer's map, one map per
    answer word), a colorbar beside the first row, then the prompt's words shaded by their score
    relative to the largest (0: the answer needs nothing of that word)."""
    from ..viz.canvas import (
        Canvas,
        colorbar_reserve,
        draw_colorbar,
        draw_heading,
        draw_image,
        draw_title,
        draw_tokens,
        load_mpl,
        new_canvas,
        panel_size,
    )
    from ..viz.layout import Ruler, heading_height, layout_tokens, title_height, title_lines
    from ..viz.style import IMG_GAP, IMG_SIDE_CMP, MARGIN, ROW_GAP, Fonts

    mpl = load_mpl()
    fig, canvas = new_canvas(mpl, dpi)
    ruler, fonts = Ruler(canvas.get_renderer(), dpi), Fonts(mpl.FontProperties)
    pw, ph = panel_size(int(panels[0][1].shape[-2]), int(panels[0][1].shape[-1]), IMG_SIDE_CMP, dpi)
    cols = min(len(panels), PANELS_PER_ROW)
    content_w = cols * pw + (cols - 1) * IMG_GAP + colorbar_reserve(ruler, fonts)
    t_lines, s_lines = title_lines(ruler, fonts, title, subtitle, content_w)
    head_h = heading_height(ruler, fonts)
    y0 = MARGIN + title_height(ruler, fonts, t_lines, s_lines)
    rows = -(-len(panels) // cols)
    block, scores = None, None
    if prompt_words and prompt_scores is not None:
        block = layout_tokens(ruler, fonts, prompt_words, set(), content_w)
        top = float(prompt_scores.max()) if prompt_scores.numel() else 0.0
        scores = [float(v) / top if top > 0 else 0.0 for v in prompt_scores]
    text_y = y0 + rows * (head_h + ph + ROW_GAP)
    height = text_y + (head_h + block.height if block is not None else -ROW_GAP) + MARGIN
    cv = Canvas(mpl, fig, canvas, content_w + 2 * MARGIN, height, dpi)
    draw_title(cv, ruler, fonts, t_lines, s_lines, MARGIN, MARGIN, content_w)
    for i, (name, picture) in enumerate(panels):
        x = MARGIN + (i % cols) * (pw + IMG_GAP)
        y = y0 + (i // cols) * (head_h + ph + ROW_GAP)
        draw_heading(cv, ruler, fonts, x, y, pw, name)
        draw_image(cv, x, y + head_h, pw, ph, picture, boxes)
    draw_colorbar(cv, ruler, fonts, MARGIN + cols * pw + (cols - 1) * IMG_GAP + 0.07, y0 + head_h, ph, "jet")
    if block is not None:
        draw_heading(cv, ruler, fonts, MARGIN, text_y, content_w, "prompt words the answer needs (M2IB on the prompt)")
        draw_tokens(cv, fonts, block, MARGIN + (content_w - block.width) / 2, text_y + head_h, scores)
    return cv.to_pil()


__all__ = ["ANSWER_SOURCES", "AnswerExplanation", "answer_figure"]
