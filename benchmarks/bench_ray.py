"""Throughput of `m2ib evaluate`: the local scheduler against Ray (one local instance, and a
two-node cluster on this machine), measured side by side in one run on the same pairs.

Work per pair: M2IB (the model's recommended settings) explains image and text, then the
confidence metric (both protocols) scores the maps, i.e. an audit's explain-and-score pass.
Each configuration runs into a fresh folder; wall time covers everything from the call to the
written summary (Ray start, actors loading the model, the merge), so it includes Ray's fixed
costs. The last column checks that every configuration gave the local run's numbers.

    python benchmarks/bench_ray.py                     # the README's table (CPU)
    python benchmarks/bench_ray.py --device cuda --n 2000 --batch-size 128 --skip-cluster   # one GPU

The projection for 15,000 pairs on N GPUs divides by the measured single-GPU rate when
``--device cuda`` ran; it assumes the pairs split evenly and ignores start-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from m2ib.evaluation.distributed import RAY_ENV

for _key, _value in RAY_ENV.items():
    os.environ.setdefault(_key, _value)

import m2ib  # noqa: E402
from m2ib.datasets.tables import load_table  # noqa: E402
from m2ib.evaluation.distributed import RayConfig, run_evaluation_ray  # noqa: E402
from m2ib.evaluation.runner import read_results, run_evaluation  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="model name or directory (default: shapes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--n", type=int, default=48, help="test pairs (default: 48)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch in every configuration (default: 8)")
    p.add_argument("--actors", type=int, default=2, help="Ray actors (default: 2)")
    p.add_argument("--skip-cluster", action="store_true", help="skip the two-node cluster")
    return p.parse_args(argv)


def metrics_of(out: Path) -> dict:
    _, records = read_results(out / "results.jsonl")
    return {(r["row"], r["method"]): r["metrics"] for r in records if r["kind"] == "pair"}


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    diffs = [abs(a[k][m] - b[k][m]) for k in a for m in a[k] if a[k][m] is not None and b[k][m] is not None]
    return max(diffs, default=0.0)


def main(argv=None) -> None:
    import ray

    args = parse_args(argv)
    backend = m2ib.load(args.model, device=args.device)
    table = load_table(f"shapes:test:{args.n}", size=backend.geometry.image_size[0])
    config = ["confidence"]
    gpus = 1.0 if args.device.startswith("cuda") else 0.0
    cpus_per_actor = max(1, (os.cpu_count() or 2) // args.actors)
    root = Path(tempfile.mkdtemp(prefix="m2ib-bench-ray-"))
    rows = []

    def timed(name: str, run) -> None:
        out = root / name.replace(" ", "_")
        start = time.perf_counter()
        result = run(out)
        seconds = time.perf_counter() - start
        rows.append((name, result.evaluated, seconds, out))
        print(f"{name}: {result.evaluated} pairs in {seconds:.1f} s", flush=True)

    timed(
        "local, batch 1",
        lambda out: run_evaluation(backend, table, ["m2ib"], config, None, 0, out, progress=False, batch_size=1),
    )
    timed(
        f"local, batch {args.batch_size}",
        lambda out: run_evaluation(
            backend, table, ["m2ib"], config, None, 0, out, progress=False, batch_size=args.batch_size
        ),
    )
    local = RayConfig(
        actors=args.actors,
        batch_size=args.batch_size,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus,
        object_store_memory=200 * 2**20,
    )
    timed(
        f"Ray, 1 node, {args.actors} actors",
        lambda out: run_evaluation_ray(
            backend, args.model, table, ["m2ib"], config, None, 0, out, local, device=args.device, progress=False
        ),
    )
    if not args.skip_cluster:
        from ray.cluster_utils import Cluster

        per_node = cpus_per_actor + 1  # one actor per node, and a CPU for Ray Data's own tasks
        node = {"num_cpus": per_node, "num_gpus": int(gpus), "object_store_memory": 200 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            spread = RayConfig(actors=2, batch_size=args.batch_size, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus)
            timed(
                "Ray, 2 nodes, 1 actor each",
                lambda out: run_evaluation_ray(
                    backend,
                    args.model,
                    table,
                    ["m2ib"],
                    config,
                    None,
                    0,
                    out,
                    spread,
                    device=args.device,
                    progress=False,
                ),
            )
        finally:
            ray.shutdown()
            cluster.shutdown()
    reference = metrics_of(rows[0][3])
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores ({cpu})"
    print(
        f"\nmodel {args.model}, {args.n} shapes test pairs, M2IB (image and text) + confidence; {device}; "
        f"torch {torch.__version__}, ray {ray.__version__}\n"
    )
    print("| configuration | pairs | wall s | pairs/s | vs local batch 1 | max abs diff vs local batch 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = rows[0][1] / rows[0][2]
    for name, n, seconds, out in rows:
        rate = n / seconds
        print(
            f"| {name} | {n} | {seconds:.1f} | {rate:.2f} | {rate / base:.2f}x | "
            f"{max_difference(metrics_of(out), reference):.1e} |"
        )
    if args.device.startswith("cuda"):
        best = max(n / s for _, n, s, _ in rows)
        print(
            "\nprojected for 15,000 pairs: "
            + ", ".join(f"{g} GPU{'s' if g > 1 else ''}: {15000 / (best * g) / 60:.1f} min" for g in (1, 4, 8))
        )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
