"""Time ``m2ib tune`` on the built-in random CLIP ViT-B/32 (12-block towers): the default grid on 16
pairs (target: <= 30 minutes on 2 idle CPU cores). With no flags the run is that grid itself and
the table gives its wall time, its CPU time and the CPU time over the best two-thread scaling seen.

    OMP_NUM_THREADS=2 python benchmarks/bench_tune.py --out out/bench_tune

A smaller run may be made instead (fewer pairs, layers, betas: the cores may be shared); the
extrapolation reads the measured seconds of each finished point from OUT/points.jsonl and fits,
per tower, ``seconds = a * pairs * blocks_after_the_bottleneck + b * pairs`` (the fits run the
blocks after the bottleneck; the criteria run the whole tower a fixed number of times per pair), then
sums that model over the default grid. The prefix and the model load are outside the points'
seconds and are reported separately (the wall time of the run).

    OMP_NUM_THREADS=2 python benchmarks/bench_tune.py --pairs 2 --layers 9,11 --betas 0.1 \\
        --bottlenecks published --out out/bench_tune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from m2ib.tuning.grid import DEFAULT_BETAS, default_layers

MODEL = "random-vit-b-32"
DEPTH = {"image": 12, "text": 12}
DEFAULT_LAYERS = default_layers(12, 9, None)  # the published layer of 12 blocks is 9; no recommended layer
DEFAULT_VARIANTS = ("published", "standardised")
TARGET_PAIRS = 16


def run(args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "m2ib", "tune", "--model", MODEL, "--data", f"shapes:val:{args.pairs}"]
    cmd += ["--out", str(args.out), "--towers", args.towers, "--no-progress", "--batch-size", str(args.batch_size)]
    for flag in ("layers", "betas", "bottlenecks"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    return time.perf_counter() - start


def fit_model(points: list[dict], pairs: int, key: str) -> tuple[float, float]:
    """Least squares of ``points[key] = a * pairs * blocks_after + b * pairs`` (a, b >= 0)."""
    x = torch.tensor([[pairs * (DEPTH[p["tower"]] - 1 - p["layer"]), pairs] for p in points], dtype=torch.float64)
    y = torch.tensor([p[key] for p in points], dtype=torch.float64)
    if len({p["layer"] for p in points}) < 2:  # one layer: no split between the two terms; all on the fits
        a = float(y.sum() / x[:, 0].clamp_min(1).sum())
        return a, 0.0
    a, b = torch.linalg.lstsq(x, y[:, None]).solution[:, 0].tolist()
    return max(a, 0.0), max(b, 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=TARGET_PAIRS)
    p.add_argument("--towers", default="image,text")
    p.add_argument("--layers", default=None)
    p.add_argument("--betas", default=None)
    p.add_argument("--bottlenecks", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("out/bench_tune"))
    p.add_argument("--report-only", action="store_true", help="extrapolate from an existing OUT")
    args = p.parse_args()
    wall = None if args.report_only else run(args)
    lines = (args.out / "points.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    points = [json.loads(x) for x in lines[1:]]
    pairs = head["pairs"]
    print(f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), {pairs} pairs")
    if wall is not None:
        print(f"wall time of the run: {wall:.0f} s ({len(points)} points)")
    grid = [(layer, beta, v) for v in DEFAULT_VARIANTS for layer in DEFAULT_LAYERS for beta in DEFAULT_BETAS]
    measured = {(q["tower"], q["layer"], q["beta"], q["variant"]) for q in points}
    whole = pairs == TARGET_PAIRS and all((t, *g) in measured for t in DEPTH for g in grid)
    if whole:  # the run is the default grid itself: no extrapolation needed
        cpu = sum(q["cpu_seconds"] for q in points)
        scaling = max(q["cpu_seconds"] / q["seconds"] for q in points if q["seconds"] > 0)
        print(
            f"the default grid itself ({len(points)} points, {pairs} pairs): wall "
            + (f"{wall / 60:.1f} min (the cores may be shared), " if wall is not None else "")
            + f"points' wall sum {sum(q['seconds'] for q in points) / 60:.1f} min, CPU {cpu / 60:.1f} min; "
            f"at the best two-thread scaling seen in this run ({scaling:.2f} CPU-s per s), {cpu / scaling / 60:.1f} min "
            "of wall on 2 idle cores (target <= 30 min)"
        )
    for key in ("seconds", "cpu_seconds"):  # wall time (noisy on shared cores), and the process's CPU time
        total = 0.0
        for tower in sorted({q["tower"] for q in points}):
            mine = [q for q in points if q["tower"] == tower]
            print("  " + ", ".join(f"{q['key']}: {q[key]:.1f} s" for q in mine))
            a, b = fit_model(mine, pairs, key)
            seconds = sum(a * TARGET_PAIRS * (DEPTH[tower] - 1 - layer) + b * TARGET_PAIRS for layer, _, _ in grid)
            print(
                f"{tower} ({key}): a = {a:.3f} s per pair and block after, b = {b:.3f} s per pair; default grid "
                f"({len(grid)} points, {TARGET_PAIRS} pairs): {seconds / 60:.1f} min"
            )
            total += seconds
        print(f"extrapolated default grid ({key}), towers measured here: {total / 60:.1f} min (target <= 30 min wall)")


if __name__ == "__main__":
    main()
