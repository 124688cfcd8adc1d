"""The metric interface and its registry: a new metric is one file with one ``@register`` class.

A :class:`Metric` says what it records (:class:`Key`: name and which way is better), how the
summary shows it (:class:`Table`), what it needs from the data (:data:`NEEDS`), its options (a
frozen ``Settings`` dataclass of :func:`~m2ib.settings.setting` fields, as a method's: the
``evaluate`` flags and the record of a run's options come from it) and how it measures. A
metric object holds its settings (``self.settings``). A metric's ``sides`` are ``"image"``
and/or ``"text"`` (each method's map of that side of the pair) or :data:`PHRASES` (the image
maps of each row's object phrases, see there). Per-pair metrics (``per_pair = True``)
implement :meth:`Metric.measure` for one method's maps of one side of a batch of pairs;
whole-run metrics (ROAR+) implement :meth:`Metric.measure_run`, which runs once after every
pair is done. The evaluation loop,
the summary tables and arrows, the plots and ``METRIC_NAMES`` all read this registry.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..registry import Registry
from ..settings import SettingsBase, fields_of, owned_name

if TYPE_CHECKING:  # only for hints: metrics never import the evaluation layer at run time
    from ..datasets.tables import Row

Better = Literal["lower", "higher"]
#: What a metric may ask of a batch before it is measured: ``"masks"``, the rows' ground-truth
#: masks at the model's input size (from their own mask or boxes; None for a row with neither).
NEEDS = frozenset({"masks"})
#: The side of a metric that measures phrase maps: for each row with object phrases
#: (:attr:`~m2ib.datasets.tables.Row.phrases`), one image map per phrase, stacked [P, H, W] (None
#: for a row without phrases). An interaction method gives its maps of the phrases' character
#: spans; a first-order method, its image map of each phrase explained alone (the baseline).
#: Interaction methods have this side only.
PHRASES = "phrases"


def modality_of(side: str) -> Modality:
    """``side`` as a Modality, for metrics whose :attr:`Metric.sides` are image and/or text only."""
    if side == "image":
        return "image"
    if side == "text":
        return "text"
    raise InputError(f"metric side {side!r} is not a modality; use 'image' or 'text'")


#: The method name of a random-ranking control that a metric may measure besides the real methods
#: (ROAR+ does); reports draw it grey and dashed, last.
CONTROL = "random"


@dataclass(frozen=True)
class Key:
    """One per-pair value a metric records (a key of a record's ``"metrics"``)."""

    name: str
    better: Better


@dataclass(frozen=True)
class Table:
    """One table of the summary: a title and the keys it shows, in order."""

    title: str
    keys: tuple[str, ...]


def number(x: Any) -> float | None:
    """A JSON-ready number: None for NaN and infinities."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def numbers(xs: Any) -> list[float | None]:
    """:func:`number` of each value of a tensor or sequence."""
    return [number(v) for v in (xs.tolist() if isinstance(xs, torch.Tensor) else xs)]


@dataclass
class PairBatch:
    """What every per-pair metric of one batch reads: the rows, the model's inputs, the seeds."""

    backend: Backend
    rows: list[Row]  # the rows whose image could be read, pair i = (images[i], texts[i])
    images: ImageBatch
    texts: TextBatch
    seed: int  # the run's seed
    pair_seeds: list[int]  # one per row, from the run's seed and the row's id
    masks: list[torch.Tensor | None] = field(default_factory=list)  # filled when a metric needs "masks"

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class MethodRun:
    """One method's explanations of a batch, and the settings it ran with (``seed`` included)."""

    method: str
    settings: dict[str, Any]
    explanations: list[Any]


@dataclass
class Measured:
    """A metric's per-pair output: ``values[i]`` and ``curves[i]`` go into pair ``i``'s record."""

    values: list[dict[str, float | None]]
    curves: list[dict[str, Any]]

    @classmethod
    def empty(cls, n: int) -> Measured:
        return cls([{} for _ in range(n)], [{} for _ in range(n)])

    def put(self, key: str, per_pair: Any) -> None:
        """One value per pair, as a JSON-ready number."""
        for i, value in enumerate(self.values):
            value[key] = number(per_pair[i])

    def put_curve(self, key: str, per_pair: Any) -> None:
        """One curve (a sequence of numbers) per pair."""
        for i, curve in enumerate(self.curves):
            curve[key] = numbers(per_pair[i])


@dataclass
class RunContext:
    """What a whole-run metric reads and writes, once every pair is done."""

    backend: Backend
    table_kind: str  # the data's kind: "shapes", "mscxr", "pairs", ...
    methods: list[str]
    settings: dict[str, dict[str, Any]] | None  # the methods' settings, as given
    seed: int
    out: Path  # the run's folder (for caches)
    records: list[dict[str, Any]]  # every record so far (resumed ones included)
    emit: Callable[[dict[str, Any]], None]  # appends a record to the results file and to ``records``
    stop: Callable[[], bool]  # True once the run's time limit is spent
    progress: bool


class PlotCanvas(Protocol):
    """What the report lends a metric to draw its plots with (one style per method across plots)."""

    def figure(self, figsize: tuple[float, float]) -> Any: ...  # a matplotlib Figure
    def style(self, method: str) -> dict[str, Any]: ...  # color, marker (, linestyle)
    def label(self, method: str) -> str: ...
    def legend(self, ax: Any) -> None: ...
    def save(self, fig: Any, name: str) -> Path: ...  # plots/<name>.png, written atomically


def mean_curve(curves: Sequence[Sequence[float | None]]) -> list[float]:
    """Point-wise mean of curves of possibly different lengths (None values left out)."""
    width = max(len(c) for c in curves)
    out = []
    for j in range(width):
        vals = [v for v in (c[j] for c in curves if j < len(c)) if v is not None]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


@dataclass(frozen=True)
class MetricSettings(SettingsBase):
    """Base of every metric's options: one :func:`~m2ib.settings.setting` field per option (none here)."""


class Metric(ABC):
    """Base class of every metric; subclasses set the class attributes and one ``measure`` hook.

    ``Metric(settings)`` measures with those options (default: ``Settings()``); ``measure``
    reads them as ``self.settings``."""

    name: ClassVar[str]  # registry key, ``--metrics`` choice
    title: ClassVar[str]  # display name
    paper: ClassVar[str] = ""  # link to the paper that defines it
    sides: ClassVar[tuple[str, ...]] = ("image", "text")  # the sides it can measure (Modality or PHRASES)
    keys: ClassVar[tuple[Key, ...]] = ()  # every per-pair value it records
    tables: ClassVar[tuple[Table, ...] | None] = None  # summary tables; None: one titled ``title``, every key
    needs: ClassVar[frozenset[str]] = frozenset()  # of NEEDS
    per_pair: ClassVar[bool] = True  # False: measured once per run, after the pairs (measure_run)
    Settings: ClassVar[type[SettingsBase]] = MetricSettings  # its options

    def __init__(self, settings: SettingsBase | None = None) -> None:
        if settings is not None and not isinstance(settings, self.Settings):
            raise InputError(f"metric {self.name!r} takes {self.Settings.__name__}, not {type(settings).__name__}")
        self.settings: Any = self.Settings() if settings is None else settings

    @classmethod
    def make_settings(cls, **options: Any) -> SettingsBase:
        """The defaults with ``options`` (option name -> value); an unknown name or a bad value is one line."""
        names = [f.name for f in fields_of(cls.Settings)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise InputError(
                f"metric {cls.name!r} has no option {', '.join(unknown)} (its options: {', '.join(names) or 'none'})"
            )
        try:
            return cls.Settings(**options)
        except InputError as exc:  # a type error names the field alone: say whose
            raise InputError(f"metric {cls.name!r}: {exc}") from None

    @classmethod
    def summary_tables(cls) -> tuple[Table, ...]:
        """The summary's tables of this metric: ``tables``, or one titled ``title`` with every key."""
        return cls.tables if cls.tables is not None else (Table(cls.title, tuple(k.name for k in cls.keys)),)

    @classmethod  # noqa: B027 - a hook that checks nothing by default, not an abstract method
    def check_rows(cls, rows: Sequence[Row], data: str) -> None:
        """Raise :class:`~m2ib.errors.InputError` when the rows of ``data`` lack what this metric measures."""

    def provenance(self) -> dict[str, Any]:
        """Entries this metric adds to the provenance record's ``"metrics"`` besides its options."""
        return {}

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps: Any) -> Measured:
        """Per-pair values of ``run``'s ``side`` maps ([N, H, W] image maps, a list of [T_i] text maps, or
        for :data:`PHRASES` a list of [P_i, H, W] phrase maps or None)."""
        raise NotImplementedError(f"metric {self.name!r} is not measured pair by pair")

    def measure_run(self, context: RunContext) -> None:
        """Measure once for the whole run, emitting records (``context.emit``); whole-run metrics only."""
        raise NotImplementedError(f"metric {self.name!r} is measured pair by pair")

    def record_key(self, record: dict[str, Any]) -> tuple:
        """What a record of this metric's own ``kind`` is the result of (whole-run metrics)."""
        return record.get("kind"), record.get("method")

    def summary_section(self, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> tuple[str, str] | None:
        """(heading, Markdown) of an extra summary section, or None."""
        return None

    def plot_names(self, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[str]:
        """Methods this metric plots besides ``methods`` (they get a style too)."""
        return []

    def plots(self, records: Sequence[dict[str, Any]], methods: Sequence[str], canvas: PlotCanvas) -> dict[str, Path]:
        """This metric's own plots (name -> path); the report adds a bar chart per key."""
        return {}


def _check_metric(cls: type[Metric], registry: Registry[type[Metric]]) -> None:
    """A metric records keys no other metric records, shows only its own keys, needs only :data:`NEEDS`."""
    taken = {k.name for other in registry.values() for k in other.keys}
    mine = [k.name for k in cls.keys]
    clash = sorted(set(mine) & taken) or sorted({k for k in mine if mine.count(k) > 1})
    if clash:
        raise ValueError(f"metric {cls.name!r}: key(s) {', '.join(clash)} recorded by another metric too")
    shown = {k for table in cls.summary_tables() for k in table.keys}
    if not shown <= set(mine):
        raise ValueError(
            f"metric {cls.name!r}: its tables show keys it does not record: {', '.join(sorted(shown - set(mine)))}"
        )
    if not cls.needs <= NEEDS:
        raise ValueError(
            f"metric {cls.name!r} needs {', '.join(sorted(cls.needs - NEEDS))}: not one of {', '.join(sorted(NEEDS))}"
        )


#: Every metric, in registration order: the order values are measured in and summaries show them.
REGISTRY: Registry[type[Metric]] = Registry("metric", check=_check_metric)
#: Class decorator: make a metric available by its ``name``.
register = REGISTRY.register


#: What a run measures: metric names (each with its default options), or a mapping from name to
#: its settings object or to ``{option: value}`` (the other options at their defaults).
Chosen = Sequence[str] | Mapping[str, Any]


def choose(metrics: Chosen) -> dict[str, SettingsBase]:
    """The chosen metrics, in the order given, each with its settings object; an unknown name or
    a bad option is one :class:`~m2ib.errors.InputError` line."""
    if isinstance(metrics, str):  # one name, not its letters
        metrics = [metrics]
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [(name, None) for name in metrics]
    unknown = [name for name, _ in items if name not in REGISTRY]
    if unknown or not items:
        raise InputError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(REGISTRY.names())} or 'all'"
        )
    out: dict[str, SettingsBase] = {}
    for name, given in items:
        cls = REGISTRY[name]
        out[name] = cls(given).settings if isinstance(given, SettingsBase) else cls.make_settings(**(given or {}))
    return out


def in_registry_order(metrics: Chosen) -> list[Metric]:
    """The chosen metrics, each built with its settings, in registry order: the order values are measured in."""
    chosen = choose(metrics)
    return [cls(chosen[name]) for name, cls in REGISTRY.items() if name in chosen]


def metrics_record(metrics: Chosen) -> dict[str, Any]:
    """The provenance record's ``"metrics"``: the names chosen (in the order given), each chosen
    metric's options under their :func:`~m2ib.settings.owned_name` (``deletion_steps``, ``protocols``;
    lists for tuples), then what each adds (:meth:`Metric.provenance`)."""
    record: dict[str, Any] = {"names": list(choose(metrics))}
    built = in_registry_order(metrics)
    for metric in built:
        for f in fields_of(type(metric.settings)):
            value = getattr(metric.settings, f.name)
            record[owned_name(metric.name, f)] = list(value) if isinstance(value, tuple) else value
    for metric in built:
        record.update(metric.provenance())
    return record


def per_pair(metrics: Chosen) -> bool:
    """Whether any chosen metric is measured pair by pair (ROAR+ alone is not)."""
    return any(metric.per_pair for metric in in_registry_order(metrics))


def direction(key: str) -> Better:
    """``"lower"`` or ``"higher"``: which way is better for a per-pair value ``key`` (unknown: higher)."""
    for cls in REGISTRY.values():
        for k in cls.keys:
            if k.name == key:
                return k.better
    return "higher"


def summary_tables() -> list[Table]:
    """Every registered metric's summary tables, in registry order."""
    return [table for cls in REGISTRY.values() for table in cls.summary_tables()]
