"""Where the README's main command spends its time, phase by phase, in one process:
``m2ib explain examples/scene3.png "an orange triangle"`` on the shipped shapes model.

    python benchmarks/bench_main_command.py [--repeats 3]

Prints one table (seconds, best of ``--repeats`` for the phases that repeat). "compute" is the
two M2IB fits, the part the settings and the method decide; the rest is Python importing torch
and transformers, reading the weights and drawing the figure.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    start = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import m2ib

    rows = [("import torch, transformers, m2ib", time.perf_counter() - start)]
    start = time.perf_counter()
    model = m2ib.load("shapes")
    rows.append(("load the shapes model", time.perf_counter() - start))
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
    print(f"| **whole command** | **{sum(s for _, s in rows):.2f}** |")


if __name__ == "__main__":
    main()
