"""Which metrics a run measures and with which options (recorded in every results file)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from . import base
from .confidence import PROTOCOLS

DEFAULT_METRICS = ("confidence", "deletion", "road", "localisation")


@dataclass(frozen=True)
class MetricConfig:
    """Which metrics to measure and how (recorded in every results file as the metric protocol).

    Each option belongs to one metric, which checks it (:meth:`m2ib.metrics.base.Metric.check`)."""

    names: tuple[str, ...] = DEFAULT_METRICS  # registered metric names (m2ib.metrics.METRIC_NAMES)
    protocols: tuple[str, ...] = PROTOCOLS  # confidence protocols, both by default
    deletion_steps: int = 20  # K: deletion/insertion curves have K + 1 points
    road_percentiles: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    road_noise: float = 0.01  # sd of ROAD's imputation noise (normalised units)
    iou_k: float | None = None  # share of pixels in the top-k region; None: the mask's own area
    sanity_steps: int | None = None  # cascade points (evenly spaced); None: every step
    roar_budget: str = "tiny"  # m2ib.metrics.roar.BUDGETS key

    def __post_init__(self) -> None:
        known = base.REGISTRY.names()
        unknown = [n for n in self.names if n not in known]
        if unknown or not self.names:
            raise InputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                             f"{', '.join(known)} or 'all'")
        for cls in base.REGISTRY.values():  # every metric's options, asked for or not
            cls.check(self)

    @property
    def per_pair(self) -> bool:
        """Whether any metric is measured pair by pair (ROAR+ alone is not)."""
        return any(base.REGISTRY[n].per_pair for n in self.names)

    def as_dict(self) -> dict[str, Any]:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for cls in base.REGISTRY.values():
            d.update(cls.provenance(self))
        return d


def as_config(metrics: Sequence[str] | MetricConfig) -> MetricConfig:
    """A :class:`MetricConfig` as given, or one of default options for the metric names given."""
    return metrics if isinstance(metrics, MetricConfig) else MetricConfig(names=tuple(metrics))
