"""How much of a RISE map is its own mask pattern, on the trained and on randomised models.

A RISE map is ``sum_k s_k M_k / (K p)``. Split the scores into their mean and the rest:

    map = sum_k (s_k - mean(s)) M_k / (K p)  +  mean(s) * sum_k M_k / (K p)

The second term depends on the model only through one number, ``mean(s)``; its pattern,
``sum_k M_k``, is the same for every model explained with the same masks (the same seed). The
sanity check compares the trained model's map with randomised models' maps made with the same
masks, so that shared pattern can make RISE look model-dependent or not regardless of the model.
This script prints, for each shapes test pair and each cascade point, Spearman's rho between
the maps and the plain mask sum.

    python benchmarks/rise_mask_pattern.py --pairs 10 --masks 500
"""

from __future__ import annotations

import argparse
import math
import statistics

import m2ib
from m2ib.backends.base import Backend
from m2ib.datasets.tables import Row, load_table
from m2ib.methods.rise import MaskSampler, RISESettings
from m2ib.metrics.sanity import randomised_cascade, spearman


def measure(backend: Backend, rows: list[Row], masks: int, steps: int) -> dict[str, list[tuple[float, float]]]:
    """Per cascade point, one ``(rho(trained map, randomised map), rho(randomised map, mask sum))``
    per row; the key ``"trained"`` holds ``(rho(trained map, mask sum), nan)``."""
    defaults = RISESettings()
    rise = {"method": "rise", "masks": masks, "modalities": ("image",)}
    table: dict[str, list[tuple[float, float]]] = {"trained": []}
    # the same seed gives every pair the same masks, so one sum serves them all
    sampler = MaskSampler(
        masks, defaults.grid, defaults.p_keep, tuple(backend.geometry.image_size), defaults.seed, backend.device
    )
    mask_sum = sampler(0, masks).sum(0)
    for row in rows:
        trained = m2ib.explain(backend, row.image, row.text, **rise).image_map
        table["trained"].append((spearman(trained, mask_sum), math.nan))
        for label, randomised in randomised_cascade(backend, "image", 0, steps):
            new = m2ib.explain(randomised, row.image, row.text, **rise).image_map
            table.setdefault(label, []).append((spearman(trained, new), spearman(new, mask_sum)))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes", help="a built-in name, hub id or local directory")
    parser.add_argument("--pairs", type=int, default=10, help="the first N shapes:test pairs")
    parser.add_argument("--masks", type=int, default=500, help="RISE masks (the evaluation used 500)")
    parser.add_argument("--steps", type=int, default=3, help="cascade points, as --sanity-steps")
    args = parser.parse_args(argv)

    backend = m2ib.load(args.model)
    rows = load_table(f"shapes:test:{args.pairs}", size=backend.geometry.image_size[0]).rows
    table = measure(backend, rows, args.masks, args.steps)
    trained = [v[0] for v in table.pop("trained")]
    print(f"RISE, {args.masks} masks, {args.model}, {len(rows)} shapes:test pairs; means over pairs (sd)")
    print(f"trained map vs mask sum: rho {statistics.mean(trained):+.3f} ({statistics.pstdev(trained):.3f})")
    print("| randomised up to | rho(trained, randomised) | |rho| (sanity score) | rho(randomised, mask sum) |")
    print("| --- | --- | --- | --- |")
    for label, values in table.items():
        a = [v[0] for v in values]
        b = [v[1] for v in values]
        print(
            f"| {label} | {statistics.mean(a):+.3f} | {statistics.mean(map(abs, a)):.3f} | "
            f"{statistics.mean(b):+.3f} ({statistics.pstdev(b):.3f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
