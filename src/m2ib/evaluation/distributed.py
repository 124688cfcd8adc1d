"""``m2ib evaluate --ray``: the same evaluation as :func:`~m2ib.evaluation.runner.run_evaluation`,
run as a Ray Data pipeline over a local Ray instance or an existing cluster.

The pipeline: the driver reads the rows and forms the batches exactly as the local run does
(:func:`~m2ib.evaluation.runner.batches`), so a batch of the Ray run holds the same rows as
the local run's with the same ``batch_size`` and gives the same numbers. ``map_batches`` hands
each batch to an actor of a pool (``ray.data.ActorPoolStrategy``); each actor
(:class:`BatchEvaluator`) loads the model once and runs
:func:`~m2ib.evaluation.pairs.evaluate_rows`, the one per-pair code path of both runs.

Nothing is lost and nothing is repeated: Ray Data's own writers leave no output at all when a
write fails part-way, so they are not used. Each actor writes its batch's records as one part
file ``OUT/parts/part-*.jsonl`` (a temporary name, fsync, atomic rename; the name comes from
the batch's (row, method) keys). A re-run reads ``results.jsonl`` and the part files and
submits only the pairs not yet written. At the end the driver appends the part files'
records to ``results.jsonl`` (the local run's format; :func:`~m2ib.evaluation.runner.merge_parts`),
removes the parts, and writes the summary and plots as the local run does. ``OUT`` must be a
path every node can write (shared storage) when the cluster has more than one machine.

Ray is an optional extra: ``pip install 'm2ib[ray]'``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..datasets.tables import PairTable
from ..errors import InputError, RunError
from ..fileio import folder_lock
from ..metrics.base import Chosen, per_pair
from .pairs import evaluate_rows
from .provenance import weights_hash
from .runner import Plan, RunResult, batches, finish_run, plan_run
from .store import PARTS, RESULTS, ResultsWriter, write_part

# Set before Ray is imported (measured: without them Ray phones home, asks for a token, or binds
# the machine's outside address). Users' own values win.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True)
class RayConfig:
    """How ``m2ib evaluate --ray`` uses Ray."""

    address: str | None = None  # None: start a local Ray instance; "auto" or "ray://HOST:PORT": join a cluster
    actors: int = 2  # actor pool size: each actor loads the model once and explains one batch at a time
    batch_size: int = 8  # rows per batch, explained together by the batched path
    cpus_per_actor: float = 1.0  # logical CPUs each actor reserves (also its torch threads)
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    object_store_memory: int | None = None  # bytes; only for a local instance (None: Ray's default)
    num_cpus: int | None = None  # logical CPUs of a local instance (None: the cores, and 1 more than the actors take)

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ray {name.replace('_', ' ')} {value!r} must be a positive integer")
        if self.cpus_per_actor <= 0:
            raise InputError(f"ray cpus per actor {self.cpus_per_actor!r} must be positive")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise InputError(f"ray gpus per actor {self.gpus_per_actor!r} must be >= 0")


class BatchEvaluator:
    """A Ray Data actor: loads the model once, then evaluates one batch per call and writes it
    as one part file. Returns one line per batch for the driver's progress bar."""

    def __init__(
        self,
        model: str,
        device: str | None,
        metrics: Chosen,
        settings: dict[str, dict[str, Any]] | None,
        seed: int,
        out: str,
        weights_sha256: str,
        threads: int,
        model_settings: tuple[dict[str, dict[str, Any]], str] | None = None,
    ) -> None:
        import torch

        from ..api import load

        torch.set_num_threads(max(1, threads))  # this actor's process only
        self.backend = load(model, device=device)
        if model_settings is not None:  # the driver's recommended values, a settings file's included
            self.backend = self.backend.with_settings(*model_settings)
        found = weights_hash(self.backend.model)
        if found != weights_sha256:
            raise RuntimeError(
                f"model {model!r} on this node has weights {found[:16]}..., the driver's "
                f"{weights_sha256[:16]}...: every node must load the same model (a shared path, "
                "or the same hub snapshot)"
            )
        self.metrics, self.settings, self.seed = metrics, settings, seed
        self.out = Path(out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        out: dict[str, list] = {"pairs": [], "todo": [], "bad": [], "node": []}
        for blob, methods in zip(batch["rows"], batch["methods"]):
            rows, names = pickle.loads(blob), str(methods).split(",")
            records, bad = evaluate_rows(self.backend, rows, names, self.metrics, self.settings, self.seed)
            write_part(self.out, records)
            out["pairs"].append(len(records))
            out["todo"].append(len(rows) * len(names))
            out["bad"].append(json.dumps(bad))
            out["node"].append(node)
        return out


def connect(config: RayConfig) -> bool:
    """Initialise Ray unless it already is; True when this call started it (and must shut it down)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'm2ib[ray]'") from None
    if ray.is_initialized():
        return False
    if config.address is None:
        # Logical CPUs: with every CPU held by an actor, Ray Data's own tasks wait forever (measured:
        # 2 actors on a 2-CPU node hung), so a local instance gets one more than the actors take.
        cpus = config.num_cpus or max(os.cpu_count() or 1, math.ceil(config.actors * config.cpus_per_actor) + 1)
        ray.init(
            num_cpus=cpus,
            object_store_memory=config.object_store_memory,
            include_dashboard=False,
            log_to_driver=True,
            logging_level="warning",  # type: ignore[arg-type]  # ray's stub says int; its own default is "info"
            _node_ip_address="127.0.0.1",
        )
    else:
        _check_reachable(config.address)
        try:
            # ray's annotation says int; its own default is the string "info" (ray_constants.LOGGER_LEVEL)
            ray.init(address=config.address, include_dashboard=False, logging_level="warning")  # type: ignore[arg-type]
        except ConnectionError as exc:
            raise InputError(f"--ray {config.address}: {exc} (start one with `ray start --head`)") from None
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds when nothing answers at HOST:PORT: Ray itself retries such an address for
    minutes. ("auto" is looked up by Ray, which fails fast when no cluster is running.)"""
    import socket

    target = address.removeprefix("ray://")
    host, colon, port = target.rpartition(":")
    if address == "auto" or not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"--ray {address}: nothing answers at {host}:{port} ({exc.strerror or exc}): start the "
            "cluster (`ray start --head`) or check the address"
        ) from None


def run_evaluation_ray(
    backend: Backend,
    model: str,
    table: PairTable,
    methods: Sequence[str],
    metrics: Chosen,
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
    out: str | os.PathLike,
    ray_config: RayConfig | None = None,
    *,
    device: str | None = None,
    command: str | None = None,
    progress: bool = True,
    report: bool = True,
    time_limit: float | None = None,
) -> RunResult:
    """:func:`~m2ib.evaluation.runner.run_evaluation` on Ray: the same rows, methods, metrics,
    seeds and results format, resumable by either.

    Args:
        backend: the model, loaded in this (the driver's) process: it writes the provenance
            record and runs ROAR+, which retrains and so is not distributed.
        model: what each actor passes to :func:`m2ib.load` (a name, hub id or a directory every
            node can read); the actors check that they got the driver's weights.
        ray_config: the cluster address, pool and batch sizes, resources (:class:`RayConfig`).
        device: the actors' device when they reserve no GPU (default: cpu); actors with a GPU
            use ``cuda``.
        time_limit: seconds; no new batch is started after that long (the result is then
            unfinished and the same call resumes).

    Returns:
        a :class:`~m2ib.evaluation.runner.RunResult`; ``files`` names the summary and plots.
    """
    ray_config = ray_config or RayConfig()
    with folder_lock(out, "m2ib evaluate"):  # one run writes a folder at a time
        plan = plan_run(backend, table, methods, metrics, settings, seed, out, command, time_limit)
        result = plan.result
        work = batches(plan.todo, ray_config.batch_size)
        if work and per_pair(plan.metrics):
            started = connect(ray_config)
            try:
                model_settings = (
                    None if backend.settings_source is None else (backend.recommended, backend.settings_source)
                )
                result.nodes = sorted(_run_pipeline(plan, work, model, device, ray_config, progress, model_settings))
            except Exception as exc:
                import ray.exceptions

                if not isinstance(exc, ray.exceptions.RayError):
                    raise
                # Ray's message is the worker's whole traceback; its last line says what went wrong.
                cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
                raise RunError(
                    f"the Ray run failed: {cause[0].strip()}. Finished batches are kept in "
                    f"{result.out / PARTS}: fix the cause and re-run the same command to resume"
                ) from exc
            finally:
                if started:
                    import ray

                    ray.shutdown()
        with ResultsWriter(result.out / RESULTS) as writer:
            finish_run(plan, backend, writer, progress, report)
    return result


def _run_pipeline(
    plan: Plan,
    work: list,
    model: str,
    device: str | None,
    ray_config: RayConfig,
    progress: bool,
    model_settings: tuple[dict[str, dict[str, Any]], str] | None = None,
) -> set[str]:
    """Run the batches through the actor pool; returns the ids of the nodes that did the work."""
    import ray
    import ray.data
    from tqdm.auto import tqdm

    result = plan.result
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is the run's bar, as in the local run
    context.print_on_execution_start = False
    gpus = ray_config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    actor_device = "cuda" if gpus > 0 else (device or "cpu")
    items = [{"rows": pickle.dumps(rows), "methods": ",".join(missing)} for rows, missing in work]
    data = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * ray_config.actors)))
    evaluated = data.map_batches(
        BatchEvaluator,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=ray_config.actors),
        num_cpus=ray_config.cpus_per_actor,
        num_gpus=gpus,
        fn_constructor_kwargs={
            "model": model,
            "device": actor_device,
            "metrics": plan.metrics,
            "settings": plan.settings,
            "seed": plan.seed,
            "out": str(result.out),
            "weights_sha256": plan.header["weights_sha256"],
            "threads": max(1, int(ray_config.cpus_per_actor)),
            "model_settings": model_settings,
        },
    )
    nodes: set[str] = set()
    with tqdm(total=plan.total, desc="evaluate (ray)", unit="pair", disable=not progress, dynamic_ncols=True) as bar:
        for line in evaluated.iter_rows():
            nodes.add(str(line["node"]))
            for b in json.loads(line["bad"]):
                result.bad.append(b)
                tqdm.write(f"m2ib: skipped row {b['row']}: {b['reason']}", file=sys.stderr)
            result.evaluated += int(line["pairs"])
            bar.update(int(line["todo"]))
            if plan.clock.out_of_time():
                result.finished = False
                break
    return nodes
