"""The planted shortcut: does `m2ib audit` find a mark the model learnt to rely on, with no labels?

    OMP_NUM_THREADS=2 python benchmarks/audit_shortcut.py --out out/audit_shortcut [--pairs 36]

1. Fine-tunes the shipped shapes model twice on the same batches (m2ib.auditing.shortcut.fine_tune):
   the shortcut model sees a mark in the bottom-right corner whenever the caption names red; the
   clean control never sees it. Both in minutes on a CPU; deterministic.
2. Checks the shortcut was learnt: the mean cosine similarity of held-out red captions with and
   without the mark on the same scenes, for both models.
3. Audits both models (M2IB, default settings) on the same held-out scenes, all carrying the mark
   (OUT/heldout/pairs.tsv: the same with `m2ib audit --data`).
4. Prints the target: the share of the dataset-level map mass on the mark's box under the shortcut
   model over the share under the control (target: >= 5x), and how many of the most typical pairs
   name red; writes OUT/result.json and the side-by-side figure OUT/shortcut_vs_clean.png.
Every step resumes: a model directory already there is kept, and audits resume.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import m2ib
from m2ib.auditing.image import box_cover, mass_in
from m2ib.auditing.shortcut import (COLOUR, add_mark, fine_tune, mark_box, marked_table, names_colour, save_table)
from m2ib.datasets.tables import load_table

TARGET = 5.0


def mark_gain(backend, n: int, red: bool) -> float:
    """Mean cosine similarity gain from adding the mark to held-out scenes (shapes:val:N), over the
    pairs whose caption names red (``red``) or names another colour."""
    rows = [r for r in load_table(f"shapes:val:{n}", size=96).rows if names_colour(r.text) == red]
    plain = m2ib.similarity(backend, [r.image for r in rows], [r.text for r in rows]).diagonal()
    marked = m2ib.similarity(backend, [add_mark(r.image) for r in rows], [r.text for r in rows]).diagonal()
    return float((marked - plain).mean())


def side_by_side(audits: dict, models: dict, table, path: Path) -> Path:
    """One row per model: its mean map (mark box outlined) beside the figure of the first red pair."""
    import io

    from matplotlib.patches import Rectangle
    from PIL import Image

    from m2ib.auditing.report import pair_figure, prior_figure

    rows = {r.id: r for r in table.rows}
    red = next(r for r in table.rows if names_colour(r.text))
    pictures = []
    for name, audited in audits.items():
        fig = prior_figure(audited.summary)
        fig.axes[0].set_title(f"{name} model: mean map over {len(table.rows)} marked scenes", fontsize=10)
        patch = 96 / audited.summary.prior.shape[-1]
        x, y, w, h = (v / patch for v in mark_box(96))  # pixels -> patches (patch k spans k - 0.5 .. k + 0.5)
        fig.axes[0].add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="lime", lw=1.5, ls="--"))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        prior = Image.open(buffer).convert("RGB")
        record = next(r for r in audited.records if r["row"] == red.id)
        pair = pair_figure(models[name], rows[red.id], record)
        pictures.append((prior, pair))
    width = max(p.width + q.width for p, q in pictures)
    height = sum(max(p.height, q.height) for p, q in pictures)
    canvas = Image.new("RGB", (width, height), "white")
    top = 0
    for prior, pair in pictures:
        canvas.paste(prior, (0, top))
        canvas.paste(pair, (prior.width, top + (max(prior.height, pair.height) - pair.height) // 2))
        top += max(prior.height, pair.height)
    canvas.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/audit_shortcut"))
    parser.add_argument("--pairs", type=int, default=36, help="held-out pairs audited per model")
    parser.add_argument("--steps", type=int, default=50, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--top-layers", type=int, default=2, help="image-tower blocks that learn (6: all)")
    parser.add_argument("--stop-after-training", action="store_true")
    args = parser.parse_args()
    models, shifts = {}, {}
    print("similarity gain from the mark (held-out shapes:val:200; red captions / other captions):")
    for name, plant in (("shortcut", True), ("clean", False)):
        folder = args.out / f"model-{name}"
        if not (folder / "model.safetensors").exists():
            fine_tune(folder, plant=plant, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      top_layers=args.top_layers)
        backend = models[name] = m2ib.load(folder)
        shifts[name] = {"red": mark_gain(backend, 200, True), "other": mark_gain(backend, 200, False)}
        print(f"  {name:9s} {shifts[name]['red']:+.4f} / {shifts[name]['other']:+.4f}", flush=True)
    if args.stop_after_training:
        return
    table = marked_table(args.pairs, 96)
    save_table(table, args.out / "heldout")
    grid = models["shortcut"].geometry.patch_grid
    cover = box_cover(grid, mark_box(96), (96, 96))
    result = {"colour": COLOUR, "pairs": len(table.rows), "similarity_gain": shifts, "target": TARGET}
    audits = {}
    for name, backend in models.items():
        audited = audits[name] = m2ib.audit(backend, table, args.out / f"audit-{name}", batch_size=6)
        summary = audited.summary
        red = sum(names_colour(p["text"]) for p in summary.pairs)
        top = summary.typical()[:red]
        result[name] = {"mark_share": float(mass_in(summary.prior, cover)),
                        "even_share": float(cover.sum()) / cover.numel(),
                        "red_pairs": red, "red_in_top": sum(names_colour(p["text"]) for p in top),
                        "regions": [(r.name, r.where(grid), round(r.mass, 4)) for r in summary.regions],
                        "flagged_words": [(w.word, w.flag) for w in summary.words if w.flag]}
    ratio = result["shortcut"]["mark_share"] / max(result["clean"]["mark_share"], 1e-12)
    result["ratio"] = ratio
    result["met"] = ratio >= TARGET
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(side_by_side(audits, models, table, args.out / "shortcut_vs_clean.png"))
    red = result["shortcut"]["red_pairs"]
    print(f"\n| model | mark box share of map mass | red pairs among the {red} most typical |")
    print("|---|---|---|")
    for name in ("shortcut", "clean"):
        r = result[name]
        share = f"{r['mark_share']:.4f} (even: {r['even_share']:.4f})"
        print(f"| {name} | {share} | {r['red_in_top']} / {r['red_pairs']} |")
    print(f"\nratio shortcut / clean: {ratio:.2f}x (target >= {TARGET}x): {'MET' if result['met'] else 'NOT MET'}")


if __name__ == "__main__":
    main()
