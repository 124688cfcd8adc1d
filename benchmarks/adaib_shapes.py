"""Does AdaIB (M2IB with objective=adaib) treat mismatched pairs differently from M2IB, on the shapes model?

N validation scenes of the shapes world, each with its own caption (matched) and with the caption of
the next scene whose caption differs (mismatched). For M2IB (the model's recommended betas) and for
AdaIB's forms, the image maps' raw mass (the KL summed over patches: the information let through; a
few large-norm tokens dominate it), the mean log10 KL of a patch (not dominated by them), the AUC of
each for telling matched from mismatched pairs (1.0: every matched pair passes more than every
mismatched one), the energy of the normalised map inside the named object's mask
(matched pairs), and AdaIB's f, g and g / f per pair. Prints a markdown table; --out writes JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/adaib_shapes.py              # 20 + 20 pairs
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/adaib_shapes.py --n 8 --steps 3 --samples 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import m2ib
from m2ib.datasets.tables import load_table
from m2ib.fileio import atomic_write_text

VARIANTS = {
    "M2IB (published)": {},
    "AdaIB (default: f = 1/L2, g = MLP)": {"objective": "adaib"},
    "AdaIB (g = 1/(f + eps_g))": {"objective": "adaib", "adaib_compression": "inverse"},
    "AdaIB (f = cosine, g = MLP)": {"objective": "adaib", "adaib_relevance": "cosine"},
}


def auc(positive: list[float], negative: list[float]) -> float:
    """P(a matched pair's value > a mismatched pair's), ties counted half."""
    wins = sum((p > q) + 0.5 * (p == q) for p in positive for q in negative)
    return wins / (len(positive) * len(negative))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="validation scenes (each matched and mismatched)")
    p.add_argument("--steps", type=int, default=None, help="fit steps (default: the method's, 10)")
    p.add_argument("--samples", type=int, default=None, help="noise copies (default: the method's, 10)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    backend = m2ib.load("shapes")
    rows = load_table(f"shapes:val:{args.n}", size=backend.geometry.image_size[0]).rows
    images = [r.image for r in rows]
    matched = [r.text for r in rows]
    mismatched = []
    for i, r in enumerate(rows):  # the next scene's caption that differs from this one's
        j = next(k % len(rows) for k in range(i + 1, i + len(rows)) if rows[k % len(rows)].text != r.text)
        mismatched.append(rows[j].text)
    fit = {k: v for k, v in (("steps", args.steps), ("samples", args.samples)) if v is not None}
    results = {}
    for name, kw in VARIANTS.items():
        per = {}
        for kind, texts in (("matched", matched), ("mismatched", mismatched)):
            exps = m2ib.explain(backend, images, texts, method="m2ib", modalities=("image",), seed=0, **fit, **kw)
            mass = [float(e.image_grid.sum()) for e in exps]
            logkl = [float(e.image_grid.clamp_min(1e-12).log10().mean()) for e in exps]
            energy = [
                float((e.image_map * r.mask).sum() / e.image_map.sum().clamp_min(1e-12)) for e, r in zip(exps, rows)
            ]
            info = [e.info["image"] for e in exps]
            per[kind] = {
                "mass": mass,
                "logkl": logkl,
                "energy": energy,
                "similarity": [e.similarity for e in exps],
                **{
                    key: [i[key] for i in info]
                    for key in ("relevance", "compression_weight", "effective_beta")
                    if key in info[0]
                },
            }
        results[name] = per
    print(f"shapes model, {args.n} validation scenes, matched vs mismatched captions, image maps, seed 0\n")
    print(
        "| variant | mass matched | mass mismatched | ratio mis/match | AUC(mass) | mean log10 KL matched / mis "
        "| AUC(log KL) | energy in object (matched) | f match / mis | g/f match / mis |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    mean = statistics.fmean
    for name, per in results.items():
        m, x = per["matched"], per["mismatched"]
        f = f"{mean(m['relevance']):.3g} / {mean(x['relevance']):.3g}" if "relevance" in m else "-"
        b = f"{mean(m['effective_beta']):.3g} / {mean(x['effective_beta']):.3g}" if "effective_beta" in m else "-"
        print(
            f"| {name} | {mean(m['mass']):.4g} | {mean(x['mass']):.4g} | {mean(x['mass']) / mean(m['mass']):.3f} "
            f"| {auc(m['mass'], x['mass']):.3f} | {mean(m['logkl']):.3f} / {mean(x['logkl']):.3f} "
            f"| {auc(m['logkl'], x['logkl']):.3f} | {mean(m['energy']):.3f} | {f} | {b} |"
        )
    cos_m, cos_x = (
        mean(results["M2IB (published)"]["matched"]["similarity"]),
        mean(results["M2IB (published)"]["mismatched"]["similarity"]),
    )
    print(f"\nmean cosine similarity of the pairs: matched {cos_m:.3f}, mismatched {cos_x:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps({"n": args.n, **fit, "results": results}, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
