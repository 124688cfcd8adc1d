"""Evaluation runs: the per-batch work (a pure function) and the local loop that schedules it.

* :func:`evaluate_rows` explains a batch of rows with each method (the batched path) and
  measures every requested metric. It reads nothing but its arguments and writes nothing, so
  the same call can run anywhere (this local loop, a Ray actor in
  :mod:`m2ib.evaluation.distributed`) and give the same numbers: every random choice of a
  metric is seeded from the run's seed and the row's id. :func:`evaluate_pair` is one row.
* :func:`run_evaluation` is the local scheduler: a progress bar with ETA, one JSON line per
  finished (row, method) appended to ``OUT/results.jsonl`` with flush + fsync, resumption, bad
  rows counted, then ROAR+ and the summary and plots (:mod:`m2ib.evaluation.report`).

``results.jsonl`` holds one JSON object per line. The first is the provenance record
(``"kind": "provenance"``): m2ib, torch and transformers versions, the model name and a
SHA-256 of its weights, the seed, every method's resolved settings, the data and the metric
protocol. Then ``"kind": "pair"`` records (one per row and method) and ``"kind": "roar"``
records. A crash or Ctrl-C can leave at most a torn last line: on resume it is detected
(no newline, or not valid JSON), cut off, and that pair is done again. Re-running the same
command skips the (row, method) pairs already in the file or in a Ray run's part files
(``OUT/parts/``, see :func:`read_run`); a run with other settings in the same folder is refused,
and so is a second run while one is writing there (:func:`m2ib.fileio.folder_lock`).
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
from ..fileio import atomic_write_text, folder_lock
from ..inputs import load_image
from ..metrics import METRIC_NAMES, PROTOCOLS
from ..metrics.common import pair_seed, word_positions

RESULTS = "results.jsonl"
PARTS = "parts"  # part files of a Ray run (m2ib.evaluation.distributed)
ROAR_MAPS = "roar-maps"  # ROAR+'s cached map chunks while it runs (m2ib.metrics.roar.cached_maps)
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

    @property
    def per_pair(self) -> bool:
        """Whether any metric is measured pair by pair (ROAR+ alone is not)."""
        return any(n in PER_PAIR for n in self.names)

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

    :func:`evaluate_rows` for one row; raises :class:`~m2ib.errors.InputError` when the row's
    image cannot be read.
    """
    records, bad = evaluate_rows(backend, [row], methods, metrics, settings, seed)
    if bad:
        raise InputError(bad[0]["reason"])
    return records


def evaluate_rows(backend: Backend, rows: Sequence[Row], methods: Sequence[str],
                  metrics: Sequence[str] | MetricConfig, settings: dict[str, dict[str, Any]] | None,
                  seed: int) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Explain ``rows`` with each method (one batched call per method) and measure the metrics.

    Pure: depends only on its arguments. The randomness of every metric is seeded from
    ``seed`` and the row's id, and each method gets ``seed`` as its own seed unless
    ``settings`` sets one; batched explanations equal single ones, so the numbers do not depend
    on which rows share a batch (up to float rounding). This is the one per-pair code path of
    the local and the Ray runs.

    Returns ``(records, bad)``: records ``{"kind": "pair", "row", "method", "image", "text",
    "similarity", "metrics": {key: value}, "curves": {key: [values]}, "seconds": {"explain",
    "metrics"}}`` in (row, method) order, a value None where it is undefined (e.g. a text with
    no word; keys: see :mod:`m2ib.metrics`; seconds are the batch's divided by its rows); and
    ``{"row", "reason"}`` for each row whose image could not be read.
    """
    from ..methods import get_method
    from ..metrics import cascading_randomization, confidence_change, deletion_insertion, localisation, road
    from ..metrics.localisation import text_pointing

    config = as_config(metrics)
    good, pictures, bad = [], [], []
    for row in rows:
        try:
            pictures.append(load_image(row.image)[0])
            good.append(row)
        except InputError as exc:
            bad.append({"row": row.id, "reason": str(exc)})
    if not good:
        return [], bad
    n = len(good)
    images = backend.preprocess_images(pictures, [row.source for row in good])
    texts = backend.tokenize([row.text for row in good])
    keys = [pair_seed(seed, row.id) for row in good]
    masks = [ground_truth_mask(backend, row, picture.size) if "localisation" in config.names else None
             for row, picture in zip(good, pictures)]
    per_row: dict[tuple[str, str], dict[str, Any]] = {}
    for method in methods:
        algorithm = get_method(method)
        sides = [m for m in ("image", "text") if m in algorithm.modalities]
        own = {"seed": int(seed), **((settings or {}).get(method) or {})}
        chosen = algorithm.make_settings(backend, **own)
        start = time.perf_counter()
        exps = algorithm.explain(backend, images, texts, chosen, sides)
        explained = time.perf_counter()
        values: list[dict[str, float | None]] = [{} for _ in good]
        curves: list[dict[str, list]] = [{} for _ in good]

        def put(i_values: Any, name: str, target: list[dict] = values, as_list: bool = False) -> None:
            for i in range(n):
                target[i][name] = _numbers(i_values[i]) if as_list else _number(i_values[i])

        for side in sides:
            maps: Any = torch.stack([e.image_map for e in exps]) if side == "image" else [e.text_map for e in exps]
            if "confidence" in config.names:
                for protocol in config.protocols:
                    r = confidence_change(backend, images, texts, maps, modality=side, protocol=protocol)
                    put(r["drop"], f"{side}_drop_{protocol}")
                    put(r["increase"], f"{side}_increase_{protocol}")
            if "deletion" in config.names:
                r = deletion_insertion(backend, images, texts, maps, modality=side, steps=config.deletion_steps,
                                       seeds=keys)
                put(r["deletion_auc"], f"{side}_deletion_auc")
                put(r["insertion_auc"], f"{side}_insertion_auc")
                put(r["deletion"], f"{side}_deletion", curves, as_list=True)
                put(r["insertion"], f"{side}_insertion", curves, as_list=True)
            if "road" in config.names and side == "image":
                r = road(backend, images, texts, maps, percentiles=config.road_percentiles, noise=config.road_noise,
                         seeds=keys)
                for name in ("morf", "lerf", "combined"):
                    put(r[name], f"image_road_{name}")
                put(r["morf_curve"], "image_road_morf", curves, as_list=True)
                put(r["lerf_curve"], "image_road_lerf", curves, as_list=True)
            if "localisation" in config.names:
                if side == "image":
                    have = [i for i in range(n) if masks[i] is not None]
                    if have:
                        r = localisation(maps[have], torch.stack([masks[i] for i in have]), k=config.iou_k,
                                         seeds=[keys[i] for i in have])
                        for j, i in enumerate(have):
                            for name in ("pointing", "energy", "iou"):
                                values[i][f"image_{name}"] = _number(r[name][j])
                if side == "text":
                    for i, row in enumerate(good):
                        relevant = relevant_tokens(backend, row.text, row.relevant) if row.relevant else None
                        if relevant is not None:
                            values[i]["text_pointing"] = _number(text_pointing(maps[i], word_positions(texts, i),
                                                                               relevant))
            if "sanity" in config.names:
                r = cascading_randomization(backend, images, texts, method=method, modality=side, settings=own,
                                            maps=list(maps), steps=config.sanity_steps, seed=int(seed))
                for i in range(n):
                    values[i][f"{side}_sanity_spearman"] = _number(r["spearman"][i].abs().mean())
                    curves[i][f"{side}_sanity_spearman"] = _numbers(r["spearman"][i])
                    curves[i]["sanity_steps_" + side] = list(r["labels"])
                    if r["ssim"] is not None:
                        values[i]["image_sanity_ssim"] = _number(r["ssim"][i].mean())
                        curves[i]["image_sanity_ssim"] = _numbers(r["ssim"][i])
        seconds = {"explain": round((explained - start) / n, 4),
                   "metrics": round((time.perf_counter() - explained) / n, 4)}
        for i, row in enumerate(good):
            per_row[(row.id, method)] = {
                "kind": "pair", "row": row.id, "method": method, "image": row.source, "text": row.text,
                "similarity": _number(exps[i].similarity), "metrics": values[i], "curves": curves[i],
                "seconds": seconds}
    return [per_row[(row.id, m)] for row in good for m in methods], bad


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
    """Raise unless ``new`` resumes ``old``: the same run, or the same run restricted to some of
    its methods (``--methods`` naming a subset, with those methods' settings unchanged), so that
    cheap methods can be finished first and expensive ones later."""
    diffs = [k for k in _SAME_RUN if k not in ("methods", "settings") and old.get(k) != new.get(k)]
    old_methods, new_methods = old.get("methods") or [], new.get("methods") or []
    extra = [m for m in new_methods if m not in old_methods]
    if extra:
        diffs.append(f"methods ({', '.join(extra)} not in {', '.join(old_methods)})")
    elif any((old.get("settings") or {}).get(m) != (new.get("settings") or {}).get(m) for m in new_methods):
        diffs.append("settings")
    if diffs:
        raise InputError(f"{path} holds a run with other {', '.join(diffs)}: re-run the same command to resume "
                         "(--methods may name some of its methods only), or use another --out")


def record_key(record: dict[str, Any]) -> tuple:
    """What a record is the result of: (kind, row, method) for pairs, (kind, method, k) for ROAR+."""
    if record.get("kind") == "roar":
        return "roar", record.get("method"), record.get("k")
    return record.get("kind"), record.get("row"), record.get("method")


def part_name(records: Sequence[dict[str, Any]]) -> str:
    """A part file's name, from the (row, method) keys it holds: the same batch always gets the
    same name, so a batch done twice (a retried actor) overwrites itself instead of adding a copy."""
    keys = "\n".join(sorted(f"{r['row']}\t{r['method']}" for r in records))
    return f"part-{hashlib.sha256(keys.encode()).hexdigest()[:20]}.jsonl"


def write_part(out: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``records`` as one part file ``OUT/parts/part-*.jsonl``, atomically (temporary name,
    fsync, rename): it exists whole or not at all. Used by the Ray actors; None when empty."""
    if not records:
        return None
    text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":"), default=str) + "\n" for r in records)
    return atomic_write_text(Path(out) / PARTS / part_name(records), text)


def read_run(out: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(provenance, records) of a run folder: ``results.jsonl`` and any ``parts/part-*.jsonl``
    written by a Ray run, without duplicates (a record in both counts once)."""
    out = Path(out)
    header, records = read_results(out / RESULTS, repair=repair)
    seen = {record_key(r) for r in records}
    for part in sorted((out / PARTS).glob("part-*.jsonl")):
        _, more = read_results(part)  # parts are written whole; a stray partial line is ignored all the same
        for record in more:
            if record_key(record) not in seen:
                seen.add(record_key(record))
                records.append(record)
    return header, records


def open_run(backend: Backend, table: Table, methods: Sequence[str], config: MetricConfig,
             settings: dict[str, dict[str, Any]] | None, seed: int, out: Path,
             command: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start ``out/results.jsonl`` with its provenance record, or check that the run found there
    is this one (same data, weights, methods, settings, metrics, seed) and return its records."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    header = provenance(backend, table, methods, config, settings, seed, command)
    old, records = read_run(out, repair=True)
    if old is None:
        if records:
            raise InputError(f"{out} holds results without a provenance record: use another --out")
        if path.exists() and path.stat().st_size:
            path.unlink()  # only a torn first line: nothing to keep
        with ResultsWriter(path) as w:
            w.write(header)
        return header, []
    _check_same_run(old, header, path)
    if old.get("versions") != header["versions"]:
        print(f"m2ib: note: {path} was started with {old.get('versions')}; this run uses "
              f"{header['versions']}", file=sys.stderr)
    return old, records


def pending(table: Table, methods: Sequence[str], records: Sequence[dict[str, Any]]) -> list[tuple[Row, list[str]]]:
    """Each row with the methods it still needs, in table order (rows with none left out)."""
    done = {(r["row"], r["method"]) for r in records if r.get("kind") == "pair"}
    out = []
    for row in table.rows:
        missing = [m for m in methods if (row.id, m) not in done]
        if missing:
            out.append((row, missing))
    return out


def batches(todo: Sequence[tuple[Row, list[str]]], size: int) -> list[tuple[list[Row], list[str]]]:
    """Up to ``size`` consecutive rows that need the same methods, as (rows, methods)."""
    out: list[tuple[list[Row], list[str]]] = []
    for row, missing in todo:
        if out and out[-1][1] == missing and len(out[-1][0]) < size:
            out[-1][0].append(row)
        else:
            out.append(([row], missing))
    return out


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
    nodes: list[str] = field(default_factory=list)  # Ray node ids that did the work (Ray runs only)


class Clock:
    """Says when a run's ``time_limit`` (seconds, None: none) is spent."""

    def __init__(self, time_limit: float | None):
        self.limit, self.started = time_limit, time.perf_counter()

    def out_of_time(self) -> bool:
        return self.limit is not None and time.perf_counter() - self.started >= self.limit


def run_evaluation(backend: Backend, table: Table, methods: Sequence[str], metrics: Sequence[str] | MetricConfig,
                   settings: dict[str, dict[str, Any]] | None, seed: int, out: str | os.PathLike, *,
                   command: str | None = None, progress: bool = True, report: bool = True,
                   time_limit: float | None = None, batch_size: int = 1) -> RunResult:
    """Evaluate every row of ``table`` with every method, appending to ``out/results.jsonl``.

    Resumes a run found in ``out`` (same data, model weights, methods, settings, metrics and
    seed; from either scheduler), skipping the (row, method) pairs already there. Rows whose
    image is missing or unreadable are counted in ``RunResult.bad`` and reported, never raised.
    ``batch_size`` rows are explained together (the batched path: faster on a GPU, the same
    numbers up to float rounding). With ``report``, writes the summary (Markdown, CSV) and the
    plots at the end. ``time_limit`` (seconds): start no new batch after that long
    (``RunResult.finished`` is then False; the summary covers what is done, and the same call
    resumes). :func:`m2ib.evaluation.distributed.run_evaluation_ray` runs the same work on Ray.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} must be a positive integer")
    with folder_lock(out, "m2ib evaluate"):  # one run writes a folder at a time
        plan = plan_run(backend, table, methods, metrics, settings, seed, out, command, time_limit)
        config, methods, result, clock = plan.config, plan.methods, plan.result, plan.clock
        with ResultsWriter(result.out / RESULTS) as writer:
            if config.per_pair:
                with tqdm(total=plan.total, desc="evaluate", unit="pair", disable=not progress,
                          dynamic_ncols=True) as bar:
                    for rows, missing in batches(plan.todo, batch_size):
                        if clock.out_of_time():
                            result.finished = False
                            break
                        new, bad = evaluate_rows(backend, rows, missing, config, settings, seed)
                        for record in new:
                            writer.write(record)
                            result.records.append(record)
                        result.evaluated += len(new)
                        for b in bad:
                            result.bad.append(b)
                            tqdm.write(f"m2ib: skipped row {b['row']}: {b['reason']}", file=sys.stderr)
                        bar.update(len(rows) * len(missing))
            finish_run(plan, backend, writer, progress, report)
    return result


@dataclass
class Plan:
    """A run's resolved inputs and what is left to do (shared by both schedulers)."""

    table: Table
    config: MetricConfig
    methods: list[str]
    settings: dict[str, dict[str, Any]] | None  # per method, as given
    seed: int
    header: dict[str, Any]  # the provenance record (the one in the file when resuming)
    todo: list[tuple[Row, list[str]]]  # rows with the methods they still need
    total: int  # (row, method) pairs to do
    result: RunResult
    clock: Clock


def plan_run(backend: Backend, table: Table, methods: Sequence[str], metrics: Sequence[str] | MetricConfig,
             settings: dict[str, dict[str, Any]] | None, seed: int, out: str | os.PathLike,
             command: str | None = None, time_limit: float | None = None) -> Plan:
    """Open (or resume) the run in ``out`` and list what is left: the first step of both schedulers."""
    config = as_config(metrics)
    methods = list(dict.fromkeys(methods))
    out = Path(out)
    header, records = open_run(backend, table, methods, config, settings, seed, out, command)
    todo = pending(table, methods, records)
    total = sum(len(missing) for _, missing in todo)
    result = RunResult(out, records, list(table.bad), skipped=len(table.rows) * len(methods) - total)
    return Plan(table, config, methods, settings, seed, header, todo, total, result, Clock(time_limit))


def finish_run(plan: Plan, backend: Backend, writer: ResultsWriter, progress: bool, report: bool) -> None:
    """What follows the per-pair work in both schedulers: ROAR+ (when asked for; it retrains,
    so it runs here, in this process) and the summary and plots."""
    result, config, methods, clock, table = plan.result, plan.config, plan.methods, plan.clock, plan.table
    settings, seed = plan.settings, plan.seed
    everyone = list(plan.header.get("methods") or methods)  # the whole run's, when resuming some of them
    merge_parts(result.out, writer, result, table, everyone)
    records = result.records
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
                 emit=emit, progress=progress, stop=clock.out_of_time, cache=result.out / ROAR_MAPS)
            if clock.out_of_time():
                result.finished = False
    if report:
        from .report import write_report

        # over this command's methods: a command that resumes some of them summarises those
        result.files = write_report(result.out, plan.header, records, result.bad, methods,
                                    requested=[row.id for row in table.rows] if config.per_pair else None)


def merge_parts(out: Path, writer: ResultsWriter, result: RunResult, table: Table, methods: Sequence[str]) -> None:
    """Append the part files' records to results.jsonl in table order, then remove the parts.

    A crash in between leaves records in both places; :func:`read_run` counts them once."""
    if not (out / PARTS).is_dir():
        return  # a local run with no Ray parts: nothing to read again
    _, everything = read_run(out)
    _, in_file = read_results(out / RESULTS)
    known = {record_key(r) for r in in_file}
    held = {record_key(r) for r in result.records}
    order = {row.id: i for i, row in enumerate(table.rows)}
    rank = {m: i for i, m in enumerate(methods)}
    new = [r for r in everything if record_key(r) not in known and r.get("kind") == "pair"]
    new.sort(key=lambda r: (order.get(r["row"], len(order)), rank.get(r["method"], len(rank))))
    for record in new:
        writer.write(record)
        if record_key(record) not in held:
            result.records.append(record)
    for part in [*(out / PARTS).glob("part-*.jsonl"), *(out / PARTS).glob(".part-*.tmp")]:
        part.unlink()  # the .tmp files: writes that a killed actor left half done
    if (out / PARTS).is_dir() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
