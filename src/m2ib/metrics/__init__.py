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
``roar`` (run-level)    accuracy of a model retrained on degraded images            lower
======================  =========================================================  ===========

``side`` is ``image`` or ``text``; ``protocol`` is ``m2ib`` (the public reference's, exactly)
or ``mask`` (corrected); see :mod:`m2ib.metrics.confidence`. ``s`` is always the cosine
similarity of the explained side's embedding with the other side's fixed embedding.
"""

from .confidence import PROTOCOLS, confidence_change, perturb_image
from .deletion import deletion_insertion, gaussian_blur
from .localisation import boxes_to_mask, energy_inside, localisation, pointing_game, text_pointing, topk_iou
from .road import linear_impute, road
from .sanity import cascading_randomization, randomised_cascade, spearman, ssim

#: Metric names accepted by ``m2ib evaluate --metrics`` (``roar`` is run-level, shapes data only).
METRIC_NAMES = ("confidence", "deletion", "road", "localisation", "sanity", "roar")

_LOWER = ("_drop_m2ib", "_drop_mask", "_deletion_auc", "_road_morf", "_sanity_spearman", "_sanity_ssim",
          "roar_accuracy")


def direction(key: str) -> str:
    """``"lower"`` or ``"higher"``: which way is better for a per-pair value ``key``."""
    return "lower" if any(key.endswith(s) or key.startswith(s) for s in _LOWER) else "higher"


__all__ = ["PROTOCOLS", "METRIC_NAMES", "direction", "confidence_change", "perturb_image", "deletion_insertion",
           "gaussian_blur", "road", "linear_impute", "localisation", "pointing_game", "energy_inside", "topk_iou",
           "boxes_to_mask", "text_pointing", "cascading_randomization", "randomised_cascade", "spearman", "ssim"]
