"""``m2ib tune --ray``: the same grid scored by a pool of Ray actors, the same records as the local run.

The work is cut into units of one tower's layer and one variant (the betas of a unit are one batched
fit, as in the local run). Each actor (:class:`TuneWorker`) loads the model once, checks that it got
the driver's weights, rebuilds the tune data from the driver's rows (the same code path as the local
run: :func:`~m2ib.tuning.data.tune_data`) and scores one unit per call with
:func:`~m2ib.tuning.run.variant_records`, keeping the last layer's shared inputs (the prefix's
output and the randomised copy) for the next unit at that layer.

The driver is the only writer: it appends each returned record to ``points.jsonl`` as the local run
does (fsynced), so a re-run, local or on Ray, resumes from the same file. A kill loses the units in
flight (at most one per actor).

Ray is an optional extra: ``pip install 'm2ib[ray]'``.
"""

from __future__ import annotations

from typing import Any

from ..backends.base import Backend, Modality
from ..datasets.tables import Row
from ..errors import RunError
from .grid import Point
from .run import Grid, LayerInputs, Progress, by_variant, describe, variant_records
from .store import Store


class TuneWorker:
    """A Ray actor: the model loaded once, the tune data rebuilt from the driver's rows."""

    def __init__(self, model: str, device: str | None, rows: list[Row], seed: int, weights_sha256: str, threads: int):
        import torch

        from ..api import load
        from ..evaluation.provenance import weights_hash
        from .data import tune_data

        torch.set_num_threads(max(1, threads))  # this actor's process only
        self.backend: Backend = load(model, device=device)
        found = weights_hash(self.backend.model)
        if found != weights_sha256:
            raise RuntimeError(
                f"model {model!r} on this node has weights {found[:16]}..., the driver's "
                f"{weights_sha256[:16]}...: every node must load the same model (a shared path, "
                "or the same hub snapshot)"
            )
        self.data = tune_data(self.backend, rows, seed)
        self.seed = seed
        self.shared: LayerInputs | None = None

    def score(
        self, tower: Modality, layer: int, points: list[Point], reference: str | None, batch_size: int
    ) -> list[dict[str, Any]]:
        if self.shared is None or (self.shared.tower, self.shared.layer) != (tower, layer):
            self.shared = None  # free the last layer's copy first
            self.shared = LayerInputs.of(self.backend, self.data, tower, layer, self.seed, batch_size)
        return variant_records(
            self.backend, self.data, tower, layer, points, reference, self.seed, batch_size, self.shared
        )


def score_grid_ray(
    backend: Backend,
    model: str,
    rows: list[Row],
    grid: Grid,
    store: Store,
    seed: int,
    batch_size: int,
    ray_config: Any,
    device: str | None = None,
    progress: bool = True,
) -> None:
    """:func:`~m2ib.tuning.run.score_grid` on Ray (``ray_config``: a
    :class:`~m2ib.evaluation.distributed.RayConfig`; its ``batch_size`` is not used here)."""
    from ..evaluation.distributed import connect
    from ..evaluation.provenance import weights_hash

    units = [(t, layer, pts) for t, layer, todo in grid.todo(store) for pts in by_variant(todo)]
    if not units:
        return
    started = connect(ray_config)
    import ray
    import ray.exceptions
    from ray.util import ActorPool

    bar = Progress(len(grid), grid.done(store), progress)
    try:
        gpus = ray_config.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        actor_device = "cuda" if gpus > 0 else (device or "cpu")
        worker = ray.remote(num_cpus=ray_config.cpus_per_actor, num_gpus=gpus)(TuneWorker)
        rows_ref = ray.put(rows)
        digest = weights_hash(backend.model)
        threads = max(1, int(ray_config.cpus_per_actor))
        actors = [
            worker.remote(model, actor_device, rows_ref, seed, digest, threads)
            for _ in range(min(ray_config.actors, len(units)))
        ]
        pool = ActorPool(actors)
        work = pool.map_unordered(lambda a, u: a.score.remote(u[0], u[1], u[2], grid.reference, batch_size), units)
        for records in work:
            for record in records:
                store.append(record)
                bar.update(1, describe(record))
    except ray.exceptions.RayError as exc:
        # Ray's message is the worker's whole traceback; its last line says what went wrong.
        cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
        raise RunError(
            f"the Ray run failed: {cause[0].strip()}. Finished points are kept in {store.path}: "
            "fix the cause and re-run the same command to resume"
        ) from exc
    finally:
        bar.close()
        if started:
            ray.shutdown()
