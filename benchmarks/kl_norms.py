"""Does M2IB's KL map follow the hidden-state norm? (issue 17, item 1)

The compression term of the published bottleneck is KL(N(lam R, (1-lam)^2 var) || N(0, var)),
which contains (lam R)^2 / var: with lam near 1 (alpha starts at 5, lam = 0.993) a token's KL
is about ||R_t||^2 / (2 var) whatever the fit does. This script measures, on the shapes model
and the validation split, per tower and bottleneck layer, how far the fitted per-token KL is
explained by the per-token squared norm of R at that layer:

* ``spearman``: mean over pairs of the Spearman correlation, over the shown tokens (patches;
  words between the start and end token), of ||R_t||^2 and the fitted KL_t;
* ``argmax same``: share of pairs whose KL maximum is the token of largest norm;
* ``first word``: (text) share of pairs whose KL maximum is the token right after the start
  token (the article in "a red circle");
* ``norm share``: mean over tokens of (||lam R||^2 / (2 var)) / KL, the part of the fitted KL that
  is the squared-mean term alone.

Prints a markdown table and writes one figure (per-token norm vs KL, one panel per tower and
layer). Runs in about a minute on 2 CPU cores with the defaults.

    python benchmarks/kl_norms.py --out docs/kl_norms.png
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from research.shapes_pairs import attribution_pairs

import m2ib
from m2ib.methods.m2ib import M2IBSettings, fit_bottleneck


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def measure(
    backend, modality: str, batch, target: torch.Tensor, layer: int, beta: float, settings: M2IBSettings
) -> dict:
    """Per-pair statistics of norm vs KL at one layer and beta; also the points for the figure."""
    with torch.no_grad():
        hidden = backend.prefix(modality, batch, layer).float()  # [N, T, D]
    kl, _ = fit_bottleneck(backend, modality, batch, layer, target, beta, settings)
    norms = hidden.square().sum(-1)  # [N, T]
    rows = []
    for i in range(hidden.shape[0]):
        if modality == "text":
            shown = slice(1, int(batch.lengths[i]) - 1)
        else:
            shown = slice(backend.geometry.image_prefix_tokens, None)
        n_i, k_i = norms[i, shown], kl[i, shown]
        rows.append(
            (
                spearman(n_i, k_i),
                int(n_i.argmax() == k_i.argmax()),
                int(k_i.argmax() == 0),
                float((n_i / (2 * settings.var)).sum() / k_i.sum()),
                n_i,
                k_i,
            )
        )
    n = len(rows)
    return {
        "spearman": sum(r[0] for r in rows) / n,
        "argmax_same": sum(r[1] for r in rows) / n,
        "first": sum(r[2] for r in rows) / n,
        "norm_share": sum(r[3] for r in rows) / n,
        "points": (torch.cat([r[4] for r in rows]), torch.cat([r[5] for r in rows])),
    }


def figure(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = ["image", "text"]
    layers = {t: sorted({r["layer"] for r in results if r["tower"] == t}) for t in towers}
    cols = max(len(v) for v in layers.values())
    fig, axes = plt.subplots(2, cols, figsize=(2.3 * cols, 4.8), squeeze=False)
    from matplotlib.ticker import NullFormatter

    colours = {"published": "tab:blue", "recommended": "tab:orange"}
    for row, tower in enumerate(towers):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(layers[tower]):
                ax.axis("off")
                continue
            layer = layers[tower][col]
            for r in results:
                if r["tower"] == tower and r["layer"] == layer:
                    x, y = r["points"]
                    ax.scatter(
                        x.numpy(),
                        y.numpy(),
                        s=2,
                        alpha=0.35,
                        color=colours.get(r["source"], "tab:green"),
                        label=f"{r['beta_label']} (rho {r['spearman']:.2f})",
                        rasterized=True,
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{tower} block {layer}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, markerscale=3, loc="upper left")
            if col == 0:
                ax.set_ylabel("fitted KL per token (nats)", fontsize=8)
            if row == 1:
                ax.set_xlabel("||R_t||^2 at the bottleneck", fontsize=8)
    fig.suptitle("M2IB on the shapes model (val split): per-token KL against the hidden-state norm", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=40, help="validation pairs (single captions)")
    p.add_argument(
        "--betas",
        default="published,recommended",
        help="'published' (0.1 both towers) and/or 'recommended' (the model's m2ib.json)",
    )
    p.add_argument("--samples", type=int, default=10, help="M2IB noise copies per step (the paper: 10)")
    p.add_argument("--out", default=None, help="PNG figure path")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    backend = m2ib.load(args.model)
    pairs = attribution_pairs(backend, args.n, "val", "single")
    images = backend.preprocess_images([s.to_pil() for s in pairs.scenes])
    texts = backend.tokenize([c.text for c in pairs.captions])
    recommended = backend.recommended.get("m2ib", {})
    results = []
    start = time.perf_counter()
    with backend.attribution_mode(), torch.no_grad():
        image_emb = F.normalize(backend.embed("image", images).float(), dim=-1)
        text_emb = F.normalize(backend.embed("text", texts).float(), dim=-1)
    with backend.attribution_mode():
        for label in args.betas.split(","):
            for tower, batch, target, prefix in (
                ("image", images, text_emb, "vision"),
                ("text", texts, image_emb, "text"),
            ):
                beta = 0.1 if label == "published" else recommended[f"{prefix}_beta"]
                for layer in range(backend.num_layers(tower)):
                    r = measure(backend, tower, batch, target, layer, beta, M2IBSettings(samples=args.samples))
                    print(
                        f"  {tower} block {layer} beta {beta:g}: Spearman {r['spearman']:.2f} "
                        f"({time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
                    results.append(
                        {
                            "tower": tower,
                            "layer": layer,
                            "beta": beta,
                            "source": label,
                            "beta_label": f"beta {beta:g}",
                            **r,
                        }
                    )
    print(
        f"model {args.model}, {args.n} val pairs (single captions), M2IB defaults but layer, beta and "
        f"samples={args.samples}; "
        f"{time.perf_counter() - start:.0f} s\n"
    )
    print(
        "| tower | block | beta | Spearman(norm^2, KL) | argmax = largest norm | argmax = first word | "
        "(norm^2 / 2 var) / KL |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        first = f"{100 * r['first']:.0f} %" if r["tower"] == "text" else "-"
        print(
            f"| {r['tower']} | {r['layer']} | {r['beta']:g} | {r['spearman']:.2f} | {100 * r['argmax_same']:.0f} % | "
            f"{first} | {r['norm_share']:.2f} |"
        )
    if args.out:
        figure(results, args.out)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
