"""ROAR+ on the shapes world: remove the top-k % attributed pixels, retrain, measure accuracy.

ROAR (Hooker et al., NeurIPS 2019) asks whether the pixels a method ranks first carry the
information a model *can learn from*: remove them from every training and test image, train a
fresh model on the degraded images, and measure its accuracy. The faster accuracy falls as
``k`` grows, the better the ranking: **lower accuracy is better**. A random ranking is the
control. Our "+" is the fill: removed pixels are filled by ROAD's noisy linear imputation
(:func:`m2ib.metrics.road.linear_impute`, on [0, 1] pixels, noise sd 0.01) rather than by a
constant, so the hole's outline (which, for a good map, *is* the object's outline) does not
leak the answer to the retrained model.

The task here, exactly:

* scenes: single-object shapes scenes at the evaluated model's input size; training scene
  ``j`` is ``render_scene(split_seed("train", j, base=1), size, n_objects=(1, 1))``, test scene
  ``j`` is ``render_scene(split_seed("test", j, base=1), ...)`` (base 1: disjoint from the scenes
  the model was trained on and from ``shapes:test:N`` rows); the text is the object's class
  prompt ("a red circle");
* maps: the evaluated method's image maps *of the evaluated model* for those pairs;
* retraining: a fresh small CLIP (:func:`m2ib.training.build_model`; config
  :func:`retrain_config`) trained with m2ib.training's sigmoid loss on the degraded training
  images, classes as labels;
* accuracy: zero-shot classification of the degraded test images among the 30 class prompts
  (also split into colour accuracy and shape accuracy: is the predicted class's colour, or
  shape, right). Chance: 1/30 exact, 1/6 colour, 1/5 shape.

With the reduced budgets the tiny retrained model learns colour but hardly shape (on clean
images about 1.0 colour accuracy and 0.2 shape accuracy, so about 0.2 exact): the reduced
ROAR+ then measures mostly whether the removed pixels held the named object's *colour*.

A full ROAR run retrains for every (method, k) at full scale, which needs a GPU. ``budget``
picks a reduced setting (:data:`BUDGETS`): fewer scenes, fewer k, a tiny model and few steps.
The numbers then measure "how much class information a tiny model can learn from a few
hundred degraded scenes", which ranks maps the same way in principle, with more noise. Every
record names its budget.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..fileio import atomic_write
from ..settings import setting
from .base import CONTROL, Key, Metric, MetricSettings, PlotCanvas, RunContext, register
from .roar_retrain import (  # noqa: F401 (re-exported: the public names of ROAR+ live here)
    BUDGETS,
    RoarBudget,
    degrade,
    retrain_accuracy,
    retrain_config,
    roar_scenes,
)

RANDOM = CONTROL  # the control ranking
NONE = "none"  # k = 0: no pixel removed (the same for every method)
ROAR_MAPS = "roar-maps"  # the run folder's cache of map chunks while ROAR+ runs (see cached_maps)


def method_maps(
    backend: Backend,
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    prompts: Sequence[str],
    settings: dict[str, Any] | None,
    seed: int,
    batch_size: int = 16,
) -> torch.Tensor:
    """The method's image maps [n, S, S] for ROAR's scenes (or random ones for ``RANDOM``)."""
    if method == RANDOM:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape[0], images.shape[2], images.shape[3], generator=g)
    from .. import api

    texts = [prompts[int(c)] for c in labels]
    exps = api.explain(
        backend,
        list(images),
        texts,
        method=method,
        modalities=("image",),
        batch_size=batch_size,
        progress=False,
        **{"seed": seed, **(settings or {})},
    )
    return torch.stack([e.image_map for e in exps]).float()


MAP_CHUNK = 32  # scenes per cached chunk of maps: a crash loses at most the chunk in flight


def cached_maps(
    backend: Backend,
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    prompts: Sequence[str],
    settings: dict[str, Any] | None,
    seed: int,
    cache: Path | None,
    tag: str,
    stop: Callable[[], bool] | None = None,
    bar: Any = None,
) -> torch.Tensor | None:
    """:func:`method_maps` chunk by chunk (:data:`MAP_CHUNK` scenes), each chunk written
    atomically to ``cache/<method>-<tag>-<first>-<end>.pt`` and read back instead of recomputed
    when it is there: maps of slow methods (RISE, Kernel SHAP: about an hour on a CPU) survive a
    crash. The chunks equal one call on all scenes (per-pair seeds). None when ``stop()`` said stop."""
    if method == RANDOM:
        return method_maps(backend, method, images, labels, prompts, settings, seed)
    n, size = images.shape[0], images.shape[-2:]
    chunks = []
    for first in range(0, n, MAP_CHUNK):
        end = min(n, first + MAP_CHUNK)
        path = cache / f"{method}-{tag}-{first:05d}-{end:05d}.pt" if cache is not None else None
        chunk = None
        if path is not None and path.exists():
            try:
                chunk = torch.load(path, weights_only=True)
            except Exception:  # a damaged file: compute the chunk again
                chunk = None
            if not isinstance(chunk, torch.Tensor) or chunk.shape != (end - first, *size):
                chunk = None
        if chunk is None:
            if stop is not None and stop():
                return None
            chunk = method_maps(backend, method, images[first:end], labels[first:end], prompts, settings, seed)
            if path is not None:
                atomic_write(path, partial(torch.save, chunk))
        chunks.append(chunk)
        if bar is not None:
            bar.update(end - first)
    return torch.cat(chunks)


def roar(
    backend: Backend,
    methods: Sequence[str],
    settings: dict[str, dict[str, Any]] | None = None,
    budget: str | RoarBudget = "tiny",
    seed: int = 0,
    done: Callable[[str, int], bool] | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
    cache: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """ROAR+ for ``methods`` (plus the random control and k = 0) under a budget.

    Args:
        done: ``done(method, k)`` says which results exist already (skipped).
        emit: receives each record as soon as it is measured (the evaluation runner appends it
            to its results file).
        stop: returning True ends the work before the next retraining or map chunk.
        cache: a folder for the methods' maps, in chunks (see :func:`cached_maps`), so a
            re-run after a crash does not compute them again; a method's files are removed
            once its last ``k`` is measured. None: maps are kept in memory only.

    Returns:
        The records measured by this call: ``{"kind": "roar", "method", "k", "accuracy",
        "colour_accuracy", "shape_accuracy", "budget", "seconds"}``.
    """
    import time

    from tqdm.auto import tqdm

    plan = BUDGETS[budget] if isinstance(budget, str) else budget
    size = backend.geometry.image_size[0]
    config = retrain_config(size, plan, seed)
    folder = Path(cache) if cache is not None else None
    work = [(NONE, 0)] + [(m, k) for m in [*methods, RANDOM] for k in plan.ks]
    todo = [(m, k) for m, k in work if not (done and done(m, k))]
    records: list[dict[str, Any]] = []
    if not todo:
        return records
    train_x, train_y, prompts = roar_scenes(size, plan.train, "train")
    test_x, test_y, _ = roar_scenes(size, plan.test, "test")
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with tqdm(total=len(todo), desc="ROAR+", unit="run", disable=not progress) as bar:
        for index, (method, k) in enumerate(todo):
            if stop is not None and stop():
                break
            start = time.perf_counter()
            if method == NONE:
                tr, te = train_x, test_x
            else:
                if method not in maps:
                    own = (settings or {}).get(method, {})
                    with tqdm(
                        total=plan.train + plan.test,
                        desc=f"ROAR+ maps ({method})",
                        unit="scene",
                        leave=False,
                        disable=not progress or method == RANDOM,
                    ) as scenes:
                        train_maps = cached_maps(
                            backend, method, train_x, train_y, prompts, own, seed, folder, "train", stop, scenes
                        )
                        test_maps = (
                            None
                            if train_maps is None
                            else cached_maps(
                                backend, method, test_x, test_y, prompts, own, seed + 1, folder, "test", stop, scenes
                            )
                        )
                    if train_maps is None or test_maps is None:
                        break  # stopped: the chunks done so far are on disk
                    maps[method] = (train_maps, test_maps)
                tr = degrade(train_x, maps[method][0], k, seed)
                te = degrade(test_x, maps[method][1], k, seed + 7)
            scores = retrain_accuracy(tr, train_y, te, test_y, prompts, config, details=True)
            record = {
                "kind": "roar",
                "method": method,
                "k": k,
                **scores,
                "budget": plan.name,
                "seconds": round(time.perf_counter() - start, 3),
            }
            records.append(record)
            if emit:
                emit(record)
            bar.update(1)
            if folder is not None and all(m != method for m, _ in todo[index + 1 :]):
                maps.pop(method, None)
                for path in [*folder.glob(f"{method}-*.pt"), *folder.glob(f".{method}-*.tmp")]:
                    path.unlink()  # its results are recorded: the maps are no longer needed
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return records


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def roar_order(roar_records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    """The methods of ROAR+ records: ``methods`` first in their order, then any other method found
    (a run resumed method by method), the random control last."""
    found = list(dict.fromkeys(r["method"] for r in roar_records if r["k"] > 0))
    order = [m for m in methods if m in found] + [m for m in found if m not in methods and m != RANDOM]
    return order + [m for m in found if m == RANDOM]


def roar_table(records: Sequence[dict[str, Any]], methods: Sequence[str] = ()) -> str:
    """The ROAR+ records as a Markdown table (methods in :func:`roar_order`); "" without any."""
    roar = [r for r in records if r.get("kind") == "roar"]
    if not roar:
        return ""
    ks = sorted({r["k"] for r in roar if r["k"] > 0})
    base = next((r["accuracy"] for r in roar if r["k"] == 0), None)
    budget = roar[0].get("budget", "?")
    base_colour = next((r.get("colour_accuracy") for r in roar if r["k"] == 0), None)
    lines = [
        f"ROAR+ (budget `{budget}`): accuracy of a model retrained on images with the top k % pixels "
        f"removed by linear imputation, as exact class / colour only; lower is better. k = 0 (nothing "
        f"removed): {_fmt(base)} / {_fmt(base_colour)}.",
        "",
        "| method | " + " | ".join(f"k = {k} %" for k in ks) + " | mean |",
        "| --- | " + " | ".join("---" for _ in ks) + " | --- |",
    ]
    for m in roar_order(roar, methods):
        acc = {r["k"]: (r["accuracy"], r.get("colour_accuracy")) for r in roar if r["method"] == m}
        cells, exact, colour = [], [], []
        for k in ks:
            a, c = acc.get(k, (None, None))
            cells.append(f"{_fmt(a)} / {_fmt(c)}")
            exact += [a] if a is not None else []
            colour += [c] if c is not None else []
        mean = (
            f"{_fmt(sum(exact) / len(exact)) if exact else '-'} / {_fmt(sum(colour) / len(colour)) if colour else '-'}"
        )
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class RoarSettings(MetricSettings):
    """ROAR+'s options (``m2ib evaluate --roar-budget small``, ``{"roar": {"budget": "small"}}``).

    Attributes:
        budget: the scale, one of :data:`~m2ib.metrics.roar_retrain.BUDGETS`: ``"tiny"`` and
            ``"small"`` run on a CPU (few scenes, a tiny retrained model, few steps), ``"full"``
            needs a GPU; default ``'tiny'``. The paper retrains at full scale.
    """

    budget: str = setting(
        "tiny",
        "ROAR+ scale: tiny and small run on a CPU (reduced: few scenes, a tiny retrained model), full needs a GPU",
        choices=tuple(BUDGETS),
    )


@register
class RoarPlus(Metric):
    """ROAR+ (whole run, shapes data only): accuracy of models retrained on degraded images; lower is better.

    Hooker, Erhan, Kindermans, Kim, "A Benchmark for Interpretability Methods in Deep Neural
    Networks" (ROAR), NeurIPS 2019, https://arxiv.org/abs/1806.10758, with ROAD's imputation as
    the fill (this module's docstring). Options: :class:`RoarSettings`. Measured once per run,
    after the pairs: it explains its own scenes' images [N, H, W], retrains at each k, and writes
    records of kind ``"roar"`` (``roar_accuracy``), a random ranking as the control.

    Examples:
        >>> from m2ib.metrics import REGISTRY, choose
        >>> REGISTRY["roar"].per_pair, choose({"roar": {"budget": "small"}})["roar"]
        (False, RoarSettings(budget='small'))
        >>> import m2ib, tempfile  # a whole run: minutes on a CPU even at the tiny budget
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> run = run_evaluation(
        ...     model, load_table("shapes:test:2", size=96), ["gradcam"], ["roar"], None, 0, tempfile.mkdtemp()
        ... )  # doctest: +SKIP
        >>> sorted({r["kind"] for r in run.records})  # doctest: +SKIP
        ['roar']
    """

    name = "roar"
    title = "ROAR+"
    paper = "https://arxiv.org/abs/1806.10758"
    sides = ("image",)
    keys = (Key("roar_accuracy", "lower"),)  # its records are kind "roar", not pairs: no summary table
    tables = ()
    per_pair = False
    Settings = RoarSettings
    settings: RoarSettings

    def provenance(self) -> dict:
        """The budget's numbers (scenes, k, steps), for the run's provenance record."""
        return {"roar": BUDGETS[self.settings.budget].as_dict()}

    def record_key(self, record: dict[str, Any]) -> tuple:
        return "roar", record.get("method"), record.get("k")

    def measure_run(self, context: RunContext) -> None:
        """ROAR+ of the run's methods; retrains, so it runs in the scheduler's own process."""
        if context.table_kind != "shapes":
            print("m2ib: roar skipped: ROAR+ retrains on the shapes world; use --data shapes:SPLIT:N", file=sys.stderr)
            return
        finished = {(r["method"], r["k"]) for r in context.records if r.get("kind") == "roar"}
        roar(
            context.backend,
            context.methods,
            context.settings,
            self.settings.budget,
            context.seed,
            done=lambda m, k: (m, k) in finished,
            emit=context.emit,
            progress=context.progress,
            stop=context.stop,
            cache=context.out / ROAR_MAPS,
        )

    def summary_section(self, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> tuple[str, str] | None:
        table = roar_table(records, methods)
        return ("ROAR+", table) if table else None

    def plot_names(self, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[str]:
        return roar_order([r for r in records if r.get("kind") == "roar"], methods)

    def plots(self, records: Sequence[dict[str, Any]], methods: Sequence[str], canvas: PlotCanvas) -> dict[str, Path]:
        """Accuracy against k per method (k = 0 prepended), colour accuracy when every record has it."""
        roar = [r for r in records if r.get("kind") == "roar"]
        if not roar:
            return {}
        fig = canvas.figure((6, 4))
        ax = fig.subplots()
        key = "colour_accuracy" if all("colour_accuracy" in r for r in roar) else "accuracy"
        base = next((r[key] for r in roar if r["k"] == 0), None)
        for m in roar_order(roar, methods):
            pts = sorted((r["k"], r[key]) for r in roar if r["method"] == m)
            if base is not None:
                pts = [(0, base)] + pts
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=canvas.label(m), **canvas.style(m))
        ax.set_xlabel("k: % of pixels removed (top-ranked first)")
        ax.set_ylabel(key.replace("_", " ") + " after retraining")
        ax.set_title(f"ROAR+ (budget {roar[0].get('budget')}; lower is better)")
        canvas.legend(ax)
        return {"roar": canvas.save(fig, "roar")}
