"""Quality of a CLIP and of its M2IB maps on the shapes world (exact ground truth).

Prints a markdown table (metric | value | target | pass) with zero-shot accuracy, text->image
R@1, M2IB pointing game / energy and the mixed-caption text test on the TEST split, optionally
after choosing M2IB's layers and betas on the VALIDATION split (--select), and optionally the
same metrics for a copy of the model with re-initialised random weights (--random-control).
Definitions and seeds: research.shapes_quality (benchmarks/research/shapes_quality.py).

    python benchmarks/shapes_quality.py                                  # the shipped "shapes" model
    python benchmarks/shapes_quality.py --model DIR --select --write-recommended DIR --random-control
    python benchmarks/shapes_quality.py --model random-tiny --n-pointing 8 --n-mixed 8 --steps 2 --samples 2
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from research import shapes_quality as q

import m2ib
from m2ib.errors import M2IBError
from m2ib.fileio import atomic_write_text
from m2ib.methods import REGISTRY as METHODS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="model name or directory (default: shapes)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads)")
    p.add_argument("--n-per-class", type=int, default=10, help="zero-shot images per colour x shape class (30 classes)")
    p.add_argument("--n-retrieval", type=int, default=100, help="2-object scenes for text->image R@1")
    p.add_argument("--n-pointing", type=int, default=60, help="test pairs for the M2IB pointing game")
    p.add_argument("--n-mixed", type=int, default=60, help="test pairs for the M2IB mixed-caption test")
    p.add_argument("--n-select", type=int, default=30, help="validation pairs per grid point for --select")
    p.add_argument("--select", action="store_true", help="choose layers and betas on the validation split first")
    p.add_argument("--layers", default="all", help="layers tried by --select: 'all' or e.g. '1,2,3' (negative ok)")
    p.add_argument("--betas", default=",".join(f"{b:g}" for b in q.DEFAULT_BETAS), help="betas tried by --select")
    p.add_argument(
        "--write-recommended",
        metavar="DIR",
        default=None,
        help="with --select: store the chosen settings in DIR/m2ib.json as recommended.m2ib",
    )
    p.add_argument("--random-control", action="store_true", help="also evaluate a random re-initialised copy")
    p.add_argument("--control-seed", type=int, default=0, help="torch seed of the random re-initialisation")
    p.add_argument("--steps", type=int, default=None, help="M2IB steps (default: the method's / model's)")
    p.add_argument("--samples", type=int, default=None, help="M2IB noise samples per step")
    p.add_argument("--seed", type=int, default=None, help="M2IB noise seed (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs explained together")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    args = p.parse_args(argv)
    if args.write_recommended and not args.select:
        p.error("--write-recommended needs --select")
    return args


def write_recommended(directory: str, best: dict, provenance: dict) -> Path:
    """Merge ``best`` into DIR/m2ib.json's "recommended": {"m2ib": ...}, keeping every other key."""
    path = Path(directory) / "m2ib.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    recommended = data.setdefault("recommended", {})
    recommended["m2ib"] = {**recommended.get("m2ib", {}), **best}
    data["m2ib_selection"] = provenance
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def evaluate(backend, args, settings: dict, timings: list, label: str) -> dict:
    """All four metrics on the test split; appends (stage, seconds) to ``timings``."""
    out = {}
    progress = args.progress

    def stage(name, fn):
        start = time.perf_counter()
        value = fn()
        timings.append((f"{label}: {name}", time.perf_counter() - start))
        return value

    out["zero_shot"] = stage(
        f"zero-shot ({30 * args.n_per_class} images)",
        lambda: q.zero_shot_accuracy(backend, n_per_class=args.n_per_class, split="test"),
    )
    out["retrieval_r1"] = stage(
        f"retrieval ({args.n_retrieval} scenes)", lambda: q.retrieval_r1(backend, n=args.n_retrieval, split="test")
    )
    out["pointing"] = stage(
        f"M2IB pointing ({args.n_pointing} pairs, image side)",
        lambda: q.m2ib_pointing(
            backend, n=args.n_pointing, split="test", settings=settings, batch_size=args.batch_size, progress=progress
        ),
    )
    out["mixed"] = stage(
        f"M2IB mixed captions ({args.n_mixed} pairs, text side)",
        lambda: q.m2ib_mixed(
            backend, n=args.n_mixed, split="test", settings=settings, batch_size=args.batch_size, progress=progress
        ),
    )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", sys.argv[0], *argv])
    timings: list[tuple[str, float]] = []

    start = time.perf_counter()
    try:
        backend = m2ib.load(args.model, device=args.device)
    except M2IBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    timings.append(("load model", time.perf_counter() - start))
    g = backend.geometry
    overrides = {
        k: v for k, v in (("steps", args.steps), ("samples", args.samples), ("seed", args.seed)) if v is not None
    }

    print(f"# Shapes-world quality of `{backend.name}`\n")
    print(f"command: `{command}`\n")
    print(
        f"model: {backend.name} (input {g.image_size[0]} px, patch grid {g.patch_grid[0]}x{g.patch_grid[1]}, "
        f"{g.vision_layers}+{g.text_layers} blocks); device {backend.device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )

    selection = None
    if args.select:
        layers = None if args.layers.strip() == "all" else [int(x) for x in args.layers.split(",") if x.strip()]
        betas = [float(x) for x in args.betas.split(",") if x.strip()]
        start = time.perf_counter()
        best, rows = q.select_settings(
            backend,
            layers=layers,
            betas=betas,
            n=args.n_select,
            split="val",
            settings=overrides,
            batch_size=args.batch_size,
            progress=args.progress,
        )
        timings.append(
            (f"select on val ({len(rows)} grid points x {args.n_select} pairs)", time.perf_counter() - start)
        )
        selection = best
        print(
            f"## Validation grid search (split val, {args.n_select} pairs per point, fixed {overrides or 'defaults'})\n"
        )
        print(q.format_selection(rows))
        print(f"\nchosen: `{json.dumps(best)}`\n")
        if args.write_recommended:
            provenance = {
                "split": "val",
                "n": args.n_select,
                "layers": args.layers,
                "betas": betas,
                "fixed_settings": overrides,
                "command": command,
                "criteria": {"image": "pointing game (tie: energy)", "text": "mixed captions (tie: margin)"},
                "grid": rows,
            }
            path = write_recommended(args.write_recommended, best, provenance)
            print(f"wrote recommended settings to {path}\n")

    # The same explicit settings for the model and its random control.
    settings = {**backend.recommended.get("m2ib", {}), **overrides, **(selection or {})}
    method = METHODS.get("m2ib")()
    resolved = method.resolved(backend, method.make_settings(backend, **settings)).as_dict()
    settings = {**settings, "vision_layer": resolved["vision_layer"], "text_layer": resolved["text_layer"]}
    print(f"M2IB settings on test: `{json.dumps(resolved)}`\n")

    results = evaluate(backend, args, settings, timings, "model")
    control = None
    if args.random_control:
        start = time.perf_counter()
        control_backend = q.random_control(backend, seed=args.control_seed)
        timings.append(("build random control", time.perf_counter() - start))
        control = evaluate(control_backend, args, settings, timings, "random control")

    t = q.TARGETS
    rows = [
        (
            "zero-shot accuracy (30 classes)",
            pct(results["zero_shot"]),
            f">= {pct(t['zero_shot'])}",
            results["zero_shot"] >= t["zero_shot"],
        ),
        (
            f"text->image R@1 ({args.n_retrieval} 2-object scenes)",
            pct(results["retrieval_r1"]),
            f">= {pct(t['retrieval_r1'])}",
            results["retrieval_r1"] >= t["retrieval_r1"],
        ),
        (
            "M2IB pointing game (single captions)",
            pct(results["pointing"]["pointing"]),
            f">= {pct(t['pointing'])}",
            results["pointing"]["pointing"] >= t["pointing"],
        ),
        (
            "M2IB energy inside the named object",
            pct(results["pointing"]["energy"]),
            f"(mask area {pct(results['pointing']['mask_fraction'])})",
            None,
        ),
        (
            "M2IB mixed captions (present > absent words)",
            pct(results["mixed"]["mixed"]),
            f">= {pct(t['mixed'])}",
            results["mixed"]["mixed"] >= t["mixed"],
        ),
    ]
    if control is not None:
        rows += [
            ("random control: zero-shot accuracy", pct(control["zero_shot"]), f"~ chance {pct(1 / 30)}", None),
            (
                "random control: text->image R@1",
                pct(control["retrieval_r1"]),
                f"~ chance {pct(1 / args.n_retrieval)}",
                None,
            ),
            (
                "random control: M2IB pointing game",
                pct(control["pointing"]["pointing"]),
                f"~ mask area {pct(control['pointing']['mask_fraction'])}, far below the model's",
                None,
            ),
            (
                "random control: M2IB energy inside",
                pct(control["pointing"]["energy"]),
                f"~ mask area {pct(control['pointing']['mask_fraction'])}",
                None,
            ),
            ("random control: M2IB mixed captions", pct(control["mixed"]["mixed"]), "~ chance 50 %", None),
        ]
    print(f"## Test split (model `{backend.name}`)\n")
    print("| metric | value | target | pass |")
    print("| --- | --- | --- | --- |")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {'-' if ok is None else ('yes' if ok else 'NO')} |")
    print("\n| stage | seconds |")
    print("| --- | --- |")
    for name, seconds in timings:
        print(f"| {name} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
