"""Every registered method on the shipped shapes model: pointing game, energy inside, seconds per pair.

Pairs: held-out test scenes ``render_scene(split_seed("test", i), 96 px, 2-4 objects)``, i = 0..n-1,
each captioned with one of its objects ("a red circle"); only the image side is explained
(``research.shapes_quality.m2ib_pointing`` with ``method=...``). Pointing: the map's
maximum lies in the named object's exact mask; energy: the map's share of mass inside that mask
(``pointing_hit`` / ``energy_inside``). Higher is better; a uniform map scores the mask's area.
Each method runs with its own defaults (M2IB: the model's recommended settings) unless
``--set METHOD:NAME=VALUE`` says otherwise; slow methods can run on fewer pairs
(``--n-slow``, ``--slow``). Seconds per pair is wall time of ``m2ib.explain`` for the method's
pairs in batches of ``--batch-size``, divided by their number (scene rendering excluded).

    python benchmarks/bench_methods.py                       # the README's table (CPU)
    python benchmarks/bench_methods.py --methods gradcam,chefer --n 100
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import sys
import time

import torch
from research.shapes_pairs import attribution_pairs

import m2ib
from m2ib.methods import REGISTRY
from m2ib.metrics.localisation import energy_inside, pointing_hit

# What the README's table uses for the slow, sampling-based methods on a 2-core CPU.
DEFAULT_SLOW = ("m2ib", "rise", "kernelshap")
DEFAULT_SET = ("rise:masks=400", "kernelshap:samples=400")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="model name or directory (default: shapes)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads)")
    p.add_argument("--methods", default="all", help="comma list of methods, or all (default)")
    p.add_argument("--n", type=int, default=40, help="test pairs per method (default: 40)")
    p.add_argument("--n-slow", type=int, default=6, help="test pairs for the --slow methods (default: 6)")
    p.add_argument(
        "--slow",
        default=",".join(DEFAULT_SLOW),
        help=f"methods run on --n-slow pairs (default: {','.join(DEFAULT_SLOW)}; '' for none)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="METHOD:NAME=VALUE",
        help=f"a setting for one method (repeatable; default: {' '.join(DEFAULT_SET)})",
    )
    p.add_argument("--batch-size", type=int, default=8, help="pairs per explain batch (default: 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def parse_sets(items) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        method, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        if not method or not name or not value:
            raise SystemExit(f"--set {item!r}: expected METHOD:NAME=VALUE")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.setdefault(method, {})[name] = parsed
    return out


def run(backend, method: str, n: int, settings: dict, batch_size: int) -> dict:
    pairs = attribution_pairs(backend, n, "test", "single")
    texts = [c.text for c in pairs.captions]
    start = time.perf_counter()
    exps = m2ib.explain(
        backend,
        None,
        texts,
        pixel_values=pairs.pixel_values,
        method=method,
        modalities=("image",),
        batch_size=batch_size,
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - start
    hits = energies = areas = 0.0
    for exp, scene, caption in zip(exps, pairs.scenes, pairs.captions):
        mask = scene.masks[caption.objects[0]]
        hits += pointing_hit(exp.image_map, mask)
        energies += energy_inside(exp.image_map, mask)
        areas += float(mask.float().mean())
    return {"pointing": hits / n, "energy": energies / n, "area": areas / n, "s_per_pair": seconds / n, "n": n}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(REGISTRY) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    slow = {m.strip() for m in args.slow.split(",") if m.strip()}
    sets = parse_sets(DEFAULT_SET if args.set is None else args.set)
    backend = m2ib.load(args.model, device=args.device)
    command = "python benchmarks/bench_methods.py" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    rows = []
    total = time.perf_counter()
    for method in methods:
        n = args.n_slow if method in slow else args.n
        settings = sets.get(method, {})
        result = run(backend, method, n, settings, args.batch_size)
        rows.append((method, settings, result))
        print(
            f"{method:12s} pointing {result['pointing']:.3f} energy {result['energy']:.3f} "
            f"{result['s_per_pair']:.3f} s/pair (n={n})",
            file=sys.stderr,
            flush=True,
        )
    elapsed = time.perf_counter() - total
    print(
        f"Command: `{command}` ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, total {elapsed:.0f} s)\n"
    )
    print("| method | pointing game | energy inside | s/pair | pairs | settings (besides defaults) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method, settings, r in rows:
        given = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
        print(
            f"| {REGISTRY[method].title} | {100 * r['pointing']:.1f} % | {100 * r['energy']:.1f} % | "
            f"{r['s_per_pair']:.2f} | {r['n']} | {given} |"
        )
    area = max(r["area"] for _, _, r in rows if r["n"] == max(x["n"] for _, _, x in rows))
    print(f"| uniform map (chance) | ~{100 * area:.1f} % | {100 * area:.1f} % | - | - | mask area |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
