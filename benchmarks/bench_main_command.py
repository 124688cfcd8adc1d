"""Where the README's main command spends its time, phase by phase, in one process:
``m2ib explain examples/scene3.png "an orange triangle"`` on the shipped shapes model.

    python benchmarks/bench_main_command.py [--repeats 3] [--commands 3]

Prints one table (seconds, best of ``--repeats`` for the phases that repeat). "compute" is the
two M2IB fits, the part the settings and the method decide; the rest is Python importing torch
and transformers (as the command does: the parser imports torch and the methods, the load
transformers and the model's modules, with the garbage collector paused), reading the weights and
drawing the figure. Then the command itself, ``--commands`` times in a fresh process: the best
wall time and the best CPU time (user + sys; less disturbed than wall time by other processes
on the machine, but also inflated when the cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE, TEXT = str(ROOT / "examples" / "scene3.png"), "an orange triangle"


def best(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", type=int, default=3, help="runs of the whole command (0: none)")
    args = parser.parse_args()
    start = time.perf_counter()
    import torch  # noqa: F401

    from m2ib.cli import build_parser
    from m2ib.collector import gc_paused

    with gc_paused():  # as m2ib.cli.main parses: the explain parser imports torch and the methods
        build_parser("explain")
    import m2ib

    rows = [("import torch, m2ib (the parser)", time.perf_counter() - start)]
    start = time.perf_counter()
    model = m2ib.load("shapes")
    rows.append(("load the shapes model (transformers imported)", time.perf_counter() - start))
    m2ib.explain(model, IMAGE, TEXT, steps=1, samples=1)  # first-call allocations out of the way
    image = best(args.repeats, lambda: m2ib.explain(model, IMAGE, TEXT, modalities=("image",)))
    text = best(args.repeats, lambda: m2ib.explain(model, IMAGE, TEXT, modalities=("text",)))
    rows += [("compute: M2IB image map", image), ("compute: M2IB text map", text)]
    exp = m2ib.explain(model, IMAGE, TEXT)
    with tempfile.TemporaryDirectory() as out:
        rows.append(("figure + npz + json", best(args.repeats, lambda: exp.save(out, "scene3"))))
    print(f"torch threads: {torch.get_num_threads()}; settings: {exp.settings}")
    print("| phase | seconds |\n| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **compute (both maps)** | **{image + text:.2f}** |")
    print(f"| **sum of the phases** | **{sum(s for _, s in rows):.2f}** |")
    if args.commands:
        wall, cpu = whole_command(args.commands)
        print(f"| **the command, {args.commands} runs: best wall** | **{wall:.2f}** |")
        print(f"| **the command: best CPU (user + sys)** | **{cpu:.2f}** |")


def whole_command(runs: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``python -m m2ib explain ...`` into a fresh folder."""
    walls, cpus = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "m2ib", "explain", IMAGE, TEXT, "--out", str(Path(tmp) / "out")],
                env=env,
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(walls), min(cpus)


if __name__ == "__main__":
    main()
