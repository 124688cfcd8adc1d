"""Evaluation runs: the per-pair work (a pure function) and the loop that schedules it.

* :func:`evaluate_pair` explains one row with each method and measures every requested
  metric. It reads nothing but its arguments and writes nothing, so the same call can run
  anywhere (a local loop, a Ray task) and give the same numbers: every random choice of a
  metric is seeded from the run's seed and the row's id.
* :func:`run_evaluation` is the local scheduler: a progress bar with ETA, one JSON line per
  finished (row, method) appended to ``OUT/results.jsonl`` with flush + fsync, resumption, bad
  rows counted, then the summary and plots (:mod:`m2ib.evaluation.report`).

``results.jsonl`` holds one JSON object per line. The first is the provenance record
(``"kind": "provenance"``): m2ib, torch and transformers versions, the model name and a
SHA-256 of its weights, the seed, every method's resolved settings, the data and the metric
protocol. Then ``"kind": "pair"`` records (one per row and method) and ``"kind": "roar"``
records. A crash or Ctrl-C can leave at most a torn last line: on resume it is detected
(no newline, or not valid JSON), cut off, and that pair is done again. Re-running the same
command skips the (row, method) pairs already in the file; a run with other settings in the
same folder is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..datasets.tables import Row, Table
from ..errors import InputError
from ..inputs import load_image
from ..metrics import METRIC_NAMES, PROTOCOLS
from ..metrics.common import pair_seed, word_positions

RESULTS = "results.jsonl"
FORMAT = 1
PER_PAIR = ("confidence", "deletion", "road", "localisation", "sanity")
DEFAULT_METRICS = ("confidence", "deletion", "road", "localisation")


@dataclass(frozen=True)
class MetricConfig:
    """Which metrics to measure and how (recorded in every results file as the metric protocol)."""

    names: tuple[str, ...] = DEFAULT_METRICS  # subset of m2ib.metrics.METRIC_NAMES
    protocols: tuple[str, ...] = PROTOCOLS  # confidence protocols, both by default
    deletion_steps: int = 20  # K: deletion/insertion curves have K + 1 points
    road_percentiles: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    road_noise: float = 0.01  # sd of ROAD's imputation noise (normalised units)
    iou_k: float | None = None  # share of pixels in the top-k region; None: the mask's own area
    sanity_steps: int | None = None  # cascade points (evenly spaced); None: every step
    roar_budget: str = "tiny"  # m2ib.metrics.roar.BUDGETS key

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in METRIC_NAMES]
        if unknown or not self.names:
            raise InputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                             f"{', '.join(METRIC_NAMES)} or 'all'")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise InputError(f"unknown protocol(s) {', '.join(bad) or '(none given)'}: use {', '.join(PROTOCOLS)}")
        from ..metrics.roar import BUDGETS

        if self.roar_budget not in BUDGETS:
            raise InputError(f"roar budget {self.roar_budget!r}: use one of {', '.join(BUDGETS)}")
        if isinstance(self.deletion_steps, bool) or not isinstance(self.deletion_steps, int) or self.deletion_steps < 1:
            raise InputError(f"deletion steps {self.deletion_steps!r} must be a positive integer")
        if self.iou_k is not None and not 0 < self.iou_k <= 1:
            raise InputError(f"iou k={self.iou_k!r} must be a share in (0, 1]")
        if self.sanity_steps is not None and self.sanity_steps < 1:
            raise InputError(f"sanity steps {self.sanity_steps!r} must be a positive integer")

    def as_dict(self) -> dict[str, Any]:
        from ..metrics.roar import BUDGETS

        d = asdict(self)
        d["names"], d["protocols"] = list(self.names), list(self.protocols)
        d["road_percentiles"] = list(self.road_percentiles)
        d["protocol_definitions"] = {
            "m2ib": "public reference scripts/eval.py exactly: image = normalised pixels x the map's FIRST ROW "
                    "broadcast over rows (pytorch-grad-cam 1.4.6 reads cams[0] of a [224, 224] map); text = "
                    "start/end ids cut, ids x (map > median) so dropped ids become 0, no attention mask, "
                    "pooled at the largest id, baseline on the cut ids",
            "mask": "image = normalised pixels x the map; text = words with score <= median (start/end excluded) "
                    "removed through the attention mask, start/end kept, usual pooling, baseline = the pair's "
                    "own similarity"}
        if "roar" in self.names:
            d["roar"] = BUDGETS[self.roar_budget].as_dict()
        return d


def as_config(metrics: Sequence[str] | MetricConfig) -> MetricConfig:
    return metrics if isinstance(metrics, MetricConfig) else MetricConfig(names=tuple(metrics))


# ---------------------------------------------------------------------------------------------
# The per-pair work
# ---------------------------------------------------------------------------------------------


def ground_truth_mask(backend: Backend, row: Row, original_size: tuple[int, int]) -> torch.Tensor | None:
    """The row's mask at the model's input size: its own mask, else its boxes mapped there."""
    from ..metrics.localisation import boxes_to_mask

    size = tuple(backend.geometry.image_size)
    if row.mask is not None:
        if tuple(row.mask.shape) != size:
            raise InputError(f"row {row.id}: mask {tuple(row.mask.shape)} does not match the model's input {size}")
        return row.mask.bool()
    if row.boxes:
        mapper = getattr(backend, "preprocessing", None)
        boxes = [mapper.map_box(b, original_size) if mapper is not None else b for b in row.boxes]
        return boxes_to_mask(boxes, size)
    return None


def relevant_tokens(backend: Backend, text: str, spans: Sequence[tuple[int, int]]) -> list[int] | None:
    """Token positions (start/end included in the numbering) overlapping the character ``spans``;
    None when the tokenizer gives no offsets."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not spans:
        return None
    try:
        enc = tokenizer(text, return_offsets_mapping=True, truncation=True,
                        max_length=backend.geometry.context_length)
    except (NotImplementedError, TypeError, ValueError):
        return None
    out = []
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(max(start, a) < min(end, b) for a, b in spans):
            out.append(j)
    return out


def _number(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _numbers(xs: Any) -> list[float | None]:
    return [_number(v) for v in (xs.tolist() if isinstance(xs, torch.Tensor) else xs)]


def evaluate_pair(backend: Backend, row: Row, methods: Sequence[str], metrics: Sequence[str] | MetricConfig,
                  settings: dict[str, dict[str, Any]] | None, seed: int) -> list[dict[str, Any]]:
    """Explain ``row`` with each method and measure the metrics: one record per method.

    Pure: depends only on its arguments (the randomness of every metric is seeded from
    ``seed`` and ``row.id``; each method gets ``seed`` as its own seed unless ``settings``
    sets one). Raises :class:`~m2ib.errors.InputError` when the row's image cannot be read.

    Returns ``[{"kind": "pair", "row", "method", "image", "text", "similarity", "metrics":
    {key: value}, "curves": {key: [values]}, "seconds": {"explain", "metrics"}}]``; a value is
    None where it is undefined (e.g. a text with no word). Keys: see :mod:`m2ib.metrics`.
    """
    from ..methods import get_method
    from ..metrics import cascading_randomization, confidence_change, deletion_insertion, localisation, road
    from ..metrics.localisation import text_pointing

    config = as_config(metrics)
    image, _ = load_image(row.image)
    images = backend.preprocess_images([image], [row.source])
    texts = backend.tokenize([row.text])
    mask = ground_truth_mask(backend, row, image.size) if "localisation" in config.names else None
    key = pair_seed(seed, row.id)
    records = []
    for method in methods:
        algorithm = get_method(method)
        sides = [m for m in ("image", "text") if m in algorithm.modalities]
        own = {"seed": int(seed), **((settings or {}).get(method) or {})}
        chosen = algorithm.make_settings(backend, **own)
        start = time.perf_counter()
        exp = algorithm.explain(backend, images, texts, chosen, sides)[0]
        explained = time.perf_counter()
        values: dict[str, float | None] = {}
        curves: dict[str, list] = {}
        for side in sides:
            if side == "image":
                maps: Any = exp.image_map[None]
            else:
                maps = [exp.text_map]
            if "confidence" in config.names:
                for protocol in config.protocols:
                    r = confidence_change(backend, images, texts, maps, modality=side, protocol=protocol)
                    values[f"{side}_drop_{protocol}"] = _number(r["drop"][0])
                    values[f"{side}_increase_{protocol}"] = _number(r["increase"][0])
            if "deletion" in config.names:
                r = deletion_insertion(backend, images, texts, maps, modality=side, steps=config.deletion_steps,
                                       seeds=[key])
                values[f"{side}_deletion_auc"] = _number(r["deletion_auc"][0])
                values[f"{side}_insertion_auc"] = _number(r["insertion_auc"][0])
                curves[f"{side}_deletion"] = _numbers(r["deletion"][0])
                curves[f"{side}_insertion"] = _numbers(r["insertion"][0])
            if "road" in config.names and side == "image":
                r = road(backend, images, texts, maps, percentiles=config.road_percentiles, noise=config.road_noise,
                         seeds=[key])
                for name in ("morf", "lerf", "combined"):
                    values[f"image_road_{name}"] = _number(r[name][0])
                curves["image_road_morf"] = _numbers(r["morf_curve"][0])
                curves["image_road_lerf"] = _numbers(r["lerf_curve"][0])
            if "localisation" in config.names:
                if side == "image" and mask is not None:
                    r = localisation(exp.image_map[None], mask[None], k=config.iou_k, seeds=[key])
                    for name in ("pointing", "energy", "iou"):
                        values[f"image_{name}"] = _number(r[name][0])
                if side == "text" and row.relevant:
                    relevant = relevant_tokens(backend, row.text, row.relevant)
                    if relevant is not None:
                        values["text_pointing"] = _number(text_pointing(exp.text_map, word_positions(texts, 0),
                                                                        relevant))
            if "sanity" in config.names:
                r = cascading_randomization(backend, images, texts, method=method, modality=side, settings=own,
                                            maps=[exp.image_map if side == "image" else exp.text_map],
                                            steps=config.sanity_steps, seed=int(seed))
                values[f"{side}_sanity_spearman"] = _number(r["spearman"][0].abs().mean())
                curves[f"{side}_sanity_spearman"] = _numbers(r["spearman"][0])
                curves["sanity_steps_" + side] = list(r["labels"])
                if r["ssim"] is not None:
                    values["image_sanity_ssim"] = _number(r["ssim"][0].mean())
                    curves["image_sanity_ssim"] = _numbers(r["ssim"][0])
        records.append({
            "kind": "pair", "row": row.id, "method": method, "image": row.source, "text": row.text,
            "similarity": _number(exp.similarity), "metrics": values, "curves": curves,
            "seconds": {"explain": round(explained - start, 4), "metrics": round(time.perf_counter() - explained, 4)},
        })
    return records


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolved_settings(backend: Backend, methods: Sequence[str], settings: dict[str, dict[str, Any]] | None,
                      seed: int) -> dict[str, dict[str, Any]]:
    """Every setting each method runs with (defaults, the model's recommended, overrides, layers resolved)."""
    from ..methods import get_method

    out = {}
    for method in methods:
        algorithm = get_method(method)
        chosen = algorithm.make_settings(backend, **{"seed": int(seed), **((settings or {}).get(method) or {})})
        out[method] = algorithm.resolved(backend, chosen).as_dict()
    return json.loads(json.dumps(out, default=str))


def provenance(backend: Backend, table: Table, methods: Sequence[str], config: MetricConfig,
               settings: dict[str, dict[str, Any]] | None, seed: int, command: str | None = None) -> dict[str, Any]:
    """The provenance record written first in every results file."""
    import transformers

    from .. import __version__

    record = {
        "kind": "provenance", "format": FORMAT,
        "versions": {"m2ib": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "model": backend.name, "model_class": type(backend.model).__name__,
        "weights_sha256": weights_hash(backend.model), "device": str(backend.device),
        "seed": int(seed), "data": table.spec, "data_kind": table.kind, "rows_in_source": table.total,
        "rows": len(table.rows), "methods": list(methods),
        "settings": resolved_settings(backend, methods, settings, seed),
        "metrics": config.as_dict(),
        "command": command if command is not None else " ".join(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return json.loads(json.dumps(record, default=str))  # as it reads back from the file


_SAME_RUN = ("format", "model", "weights_sha256", "seed", "data", "rows", "methods", "settings", "metrics")


# ---------------------------------------------------------------------------------------------
# The results file
# ---------------------------------------------------------------------------------------------


def read_results(path: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(provenance record or None, the other records) of a results file.

    A last line with no newline, or one that is not a JSON object (a write cut short), is
    ignored; with ``repair=True`` it is also cut off the file so that appending can go on.
    """
    path = Path(path)
    if not path.exists():
        return None, []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            break  # a torn tail: no newline
        line = data[position:end]
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = None
        if record is not None:
            records.append(record)
            good_end = end + 1
        position = end + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    header = records[0] if records and records[0].get("kind") == "provenance" else None
    return header, [r for r in records if r.get("kind") != "provenance"]


class ResultsWriter:
    """Appends one JSON line per record, flushed and fsynced before the next one starts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = open(self.path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, separators=(",", ":"), default=str) + "\n"
        self.file.write(line.encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_same_run(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    diffs = [k for k in _SAME_RUN if old.get(k) != new.get(k)]
    if diffs:
        raise InputError(f"{path} holds a run with other {', '.join(diffs)}: re-run the same command to resume, "
                         "or use another --out")


# ---------------------------------------------------------------------------------------------
# The local scheduler
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    out: Path
    records: list[dict[str, Any]]
    bad: list[dict[str, str]] = field(default_factory=list)
    evaluated: int = 0  # (row, method) pairs measured by this call
    skipped: int = 0  # (row, method) pairs found done in the results file
    finished: bool = True  # False when stopped by ``time_limit`` before every pair was done
    files: dict[str, Path] = field(default_factory=dict)


def run_evaluation(backend: Backend, table: Table, methods: Sequence[str], metrics: Sequence[str] | MetricConfig,
                   settings: dict[str, dict[str, Any]] | None, seed: int, out: str | os.PathLike, *,
                   command: str | None = None, progress: bool = True, report: bool = True,
                   time_limit: float | None = None) -> RunResult:
    """Evaluate every row of ``table`` with every method, appending to ``out/results.jsonl``.

    Resumes a run found in ``out`` (same data, model weights, methods, settings, metrics and
    seed), skipping the (row, method) pairs already there. Rows whose image is missing or
    unreadable are counted in ``RunResult.bad`` and reported, never raised. With ``report``,
    writes the summary (Markdown, CSV) and the plots at the end. ``time_limit`` (seconds):
    start no new pair after that long (``RunResult.finished`` is then False; the summary covers
    what is done, and the same call resumes).
    """
    from tqdm.auto import tqdm

    config = as_config(metrics)
    methods = list(dict.fromkeys(methods))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    header = provenance(backend, table, methods, config, settings, seed, command)
    old, records = read_results(path, repair=True)
    if old is None:
        if path.exists() and path.stat().st_size:
            path.unlink()  # only a torn first line: nothing to keep
            records = []
        with ResultsWriter(path) as w:
            w.write(header)
    else:
        _check_same_run(old, header, path)
        if old.get("versions") != header["versions"]:
            print(f"m2ib: note: {path} was started with {old.get('versions')}; this run uses "
                  f"{header['versions']}", file=sys.stderr)
        header = old
    done = {(r["row"], r["method"]) for r in records if r.get("kind") == "pair"}
    todo = [(row, m) for row in table.rows for m in methods if (row.id, m) not in done]
    result = RunResult(out, records, list(table.bad), skipped=len(table.rows) * len(methods) - len(todo))
    failed: set[str] = set()
    started = time.perf_counter()

    def out_of_time() -> bool:
        return time_limit is not None and time.perf_counter() - started >= time_limit

    per_pair = [n for n in config.names if n in PER_PAIR]
    with ResultsWriter(path) as writer:
        if per_pair:
            with tqdm(total=len(todo), desc="evaluate", unit="pair", disable=not progress, dynamic_ncols=True) as bar:
                for row, method in todo:
                    if out_of_time():
                        result.finished = False
                        break
                    if row.id not in failed:
                        try:
                            new = evaluate_pair(backend, row, [method], config, settings, seed)
                        except InputError as exc:
                            failed.add(row.id)
                            result.bad.append({"row": row.id, "reason": str(exc)})
                            tqdm.write(f"m2ib: skipped row {row.id}: {exc}", file=sys.stderr)
                        else:
                            for record in new:
                                writer.write(record)
                                records.append(record)
                            result.evaluated += 1
                    bar.update(1)
        if "roar" in config.names and result.finished:
            if table.kind != "shapes":
                print("m2ib: roar skipped: ROAR+ retrains on the shapes world; use --data shapes:SPLIT:N",
                      file=sys.stderr)
            else:
                from ..metrics.roar import roar

                finished = {(r["method"], r["k"]) for r in records if r.get("kind") == "roar"}

                def emit(record: dict[str, Any]) -> None:
                    writer.write(record)
                    records.append(record)

                roar(backend, methods, settings, config.roar_budget, seed, done=lambda m, k: (m, k) in finished,
                     emit=emit, progress=progress, stop=out_of_time)
                if out_of_time():
                    result.finished = False
    if report:
        from .report import write_report

        result.files = write_report(out, header, records, result.bad, methods,
                                    requested=[row.id for row in table.rows] if per_pair else None)
    return result
