"""Metrics of attribution maps: each a function of a model, inputs and maps.

======================  =========================================================  ===========
metric (name)           per-pair values (keys in results files)                    better
======================  =========================================================  ===========
``confidence``          ``{side}_drop_{protocol}``: max(0, s - s_masked) x 100      lower
                        ``{side}_increase_{protocol}``: 100 if s_masked > s         higher
``deletion``            ``{side}_deletion_auc``: area under the deletion curve      lower
                        ``{side}_insertion_auc``: area under the insertion curve    higher
``road``                ``image_road_morf``: score change, most relevant removed    lower
                        ``image_road_lerf``: score change, least relevant removed   higher
                        ``image_road_combined``: (LeRF - MoRF) / 2                  higher
``localisation``        ``image_pointing``, ``image_energy``, ``image_iou``,        higher
                        ``text_pointing`` (shapes rows)
``sanity``              ``{side}_sanity_spearman`` (mean abs), ``image_sanity_ssim`` lower
``collage``             ``collage_mass``, ``collage_max`` (shapes-collage rows)     higher
``grounding``           ``phrase_pointing``, ``right_object_share`` (phrase maps    higher
                        of shapes-two rows; interaction methods too)
``roar`` (whole run)    accuracy of a model retrained on degraded images            lower
======================  =========================================================  ===========

``side`` is ``image`` or ``text``; ``protocol`` is ``m2ib`` (the public reference's, exactly)
or ``mask`` (corrected); see :mod:`m2ib.metrics.confidence`. ``s`` is always the cosine
similarity of the explained side's embedding with the other side's fixed embedding.

Each metric is one file with one ``@register`` class (:mod:`m2ib.metrics.base`): its keys and
their directions, its options (a ``Settings`` dataclass: ``m2ib evaluate --deletion-steps``...),
its summary tables and plots. ``METRIC_NAMES`` and :func:`direction` read
that registry; the evaluation runs and reports loop over it. The import order below is the
registry's order: the order of ``--metrics all``, of the values in a record and of the summary.
"""

from typing import Any

from .base import (
    CONTROL,
    PHRASES,
    REGISTRY,
    Key,
    Measured,
    MethodRun,
    Metric,
    MetricSettings,
    PairBatch,
    RunContext,
    Table,
    choose,
    direction,
    metrics_record,
    register,
    summary_tables,
)

# The import order below is the registry's order; isort must not sort it.
# isort: off
from .confidence import PROTOCOLS, confidence_change, perturb_image
from .deletion import deletion_insertion, gaussian_blur
from .road import linear_impute, road_scores
from .localisation import boxes_to_mask, energy_inside, localisation, pointing_game, text_pointing, topk_iou
from .sanity import cascading_randomization, randomised_cascade, spearman, ssim
from .collage import CollagePointing  # noqa: F401 (registers the collage pointing game)
from .grounding import Grounding  # noqa: F401 (registers phrase grounding on two-object captions)
from .roar import RoarPlus  # noqa: F401 (registers ROAR+, the whole-run metric, last)
# isort: on

#: What ``m2ib evaluate`` measures unless told (``--metrics``).
DEFAULT_METRICS = ("confidence", "deletion", "road", "localisation")


def __getattr__(name: str) -> Any:
    if name == "METRIC_NAMES":  # live: ``--metrics`` choices, including metrics registered later
        return REGISTRY.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROTOCOLS",
    "METRIC_NAMES",
    "direction",
    "confidence_change",
    "perturb_image",
    "deletion_insertion",
    "gaussian_blur",
    "road_scores",
    "linear_impute",
    "localisation",
    "pointing_game",
    "energy_inside",
    "topk_iou",
    "boxes_to_mask",
    "text_pointing",
    "cascading_randomization",
    "randomised_cascade",
    "spearman",
    "ssim",
    "Metric",
    "PHRASES",
    "Key",
    "Table",
    "Measured",
    "MethodRun",
    "PairBatch",
    "RunContext",
    "CONTROL",
    "register",
    "REGISTRY",
    "summary_tables",
    "MetricSettings",
    "DEFAULT_METRICS",
    "choose",
    "metrics_record",
]
