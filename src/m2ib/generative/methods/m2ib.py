"""M2IB on an answer, as an answer method (the default): :func:`m2ib.generative.m2ib.fit_answer`
unchanged, its settings :class:`~m2ib.generative.m2ib.AnswerM2IBSettings` (the paper's defaults).

Wang, Rudner, Wilson, "Visual Explanations of Image-Text Representations via Multi-Modal
Information Bottleneck Attribution", NeurIPS 2023, https://arxiv.org/abs/2312.17174
"""

from __future__ import annotations

from ..base import GenerativeBackend, Query
from ..m2ib import AnswerM2IBSettings, fit_answer
from .base import AnswerMethod, AnswerScores, register


@register
class AnswerM2IB(AnswerMethod):
    """The bottleneck on the image-token states; each token's score is its KL (see m2ib.generative.m2ib)."""

    name = "m2ib"
    title = "M2IB (multi-modal information bottleneck)"
    paper = "https://arxiv.org/abs/2312.17174"
    Settings = AnswerM2IBSettings

    def attribute(self, backend: GenerativeBackend, query: Query, settings: AnswerM2IBSettings) -> AnswerScores:
        fit = fit_answer(backend, query, settings)
        return AnswerScores(fit.token_scores, dict(fit.info), fit.fields())
