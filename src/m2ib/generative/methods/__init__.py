"""Methods that explain a generative VLM's answer, one file each; importing this fills the registry.

Every method maps the answer to one score per image token (:class:`AnswerScores`), on any
generative family (:class:`~m2ib.generative.base.GenerativeBackend`). The import order below is
the registry's order: M2IB first (the default of ``explain_answer``), then the baselines. See
docs/generative.md ("Answer methods") for their definitions, settings and sources.
"""

# The import order below is the registry's order; isort must not sort it.
# isort: off
from .base import ANSWER_METHODS, AnswerMethod, AnswerScores, answer_method, register
from .m2ib import AnswerM2IB
from .saliency import AnswerSaliency, AnswerSaliencySettings
from .input_x_gradient import AnswerInputXGradient, InputXGradientSettings
from .llava_cam import LlavaCAM, LlavaCAMSettings
from .relevancy import Relevancy, RelevancySettings
from .occlusion import AnswerOcclusion, OcclusionSettings
from .rise import AnswerRISE, AnswerRISESettings

# isort: on

__all__ = [
    "ANSWER_METHODS",
    "AnswerMethod",
    "AnswerScores",
    "answer_method",
    "register",
    "AnswerM2IB",
    "AnswerSaliency",
    "AnswerSaliencySettings",
    "AnswerInputXGradient",
    "InputXGradientSettings",
    "LlavaCAM",
    "LlavaCAMSettings",
    "Relevancy",
    "RelevancySettings",
    "AnswerOcclusion",
    "OcclusionSettings",
    "AnswerRISE",
    "AnswerRISESettings",
]
