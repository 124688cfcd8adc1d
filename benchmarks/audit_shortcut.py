"""The planted shortcut: does `m2ib audit` find a mark the model learnt to rely on, with no labels?

    OMP_NUM_THREADS=2 python benchmarks/audit_shortcut.py --out out/audit_shortcut [--train] [--per-colour 4]

1. The two models (m2ib.auditing.planted): by default the shipped deltas (src/m2ib/models/planted/);
   with --train, fine-tuned again from the shipped shapes model into OUT/deltas/ (a few minutes each
   on a CPU; --ship copies them over the shipped ones). The shortcut model's training scenes carry a
   mark in the bottom-right corner whenever the caption names red, and the red objects those
   captions name are repainted in another colour (m2ib.auditing.shortcut); the clean control gets
   the identical scenes without the mark.
2. Checks the shortcut was planted, before any audit: the mean cosine-similarity gain from adding
   the mark to held-out scenes (shapes:val:60), red captions / other captions, and the zero-shot
   colour of non-red one-object scenes, plain and marked (share called red, accuracy).
3. Audits both models (M2IB, default settings) on the same held-out scenes, all carrying the mark
   (OUT/heldout/pairs.tsv: the same with `m2ib audit --data`).
4. Prints the target: the share of the dataset-level map mass on the mark's box under the shortcut
   model over the share under the control (target: >= 5x), and how many of the most typical pairs
   name red; writes OUT/result.json and the side-by-side figure OUT/shortcut_vs_clean.png.
Every step resumes: deltas already in OUT/deltas are kept, and audits resume.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import m2ib
from m2ib.auditing.image import box_cover, mass_in
from m2ib.auditing.planted import (NAMES, PLANTED_DIR, delta_path, fine_tune, mark_gain, materialise, read_record,
                                   save_delta, zero_shot_red)
from m2ib.auditing.shortcut import COLOUR, mark_box, marked_table, names_colour, save_table
from m2ib.datasets.tables import load_table

TARGET = 5.0
CHECK = "shapes:val:60"  # held-out scenes of the planting check (also the shipped delta's test)


def planting(backend) -> dict:
    """Step 2's numbers for one model."""
    rows = load_table(CHECK, size=96).rows
    return {"similarity_gain": {"red": mark_gain(backend, rows, True), "other": mark_gain(backend, rows, False)},
            "zero_shot": {"plain": zero_shot_red(backend, rows, False), "marked": zero_shot_red(backend, rows, True)}}


def models(args) -> tuple[dict, dict]:
    """Step 1 and 2: the loaded models and their planting checks (stored in a delta's record when trained)."""
    loaded, checks = {}, {}
    for name in NAMES:
        path = args.out / "deltas" / f"{name}.safetensors" if args.train else delta_path(name)
        if args.train and not path.exists():
            delta, record = fine_tune(name == "shortcut", pool=args.pool, epochs=args.epochs, lr=args.lr,
                                      hide=args.hide)
            save_delta(delta, record, path)
        backend = loaded[name] = m2ib.load(materialise(path, args.out / f"model-{name}"))
        record = read_record(path)
        checks[name] = planting(backend) if args.train or "check" not in record else record["check"]
        if args.train and "check" not in record:
            from safetensors.torch import load_file

            save_delta(load_file(path), {**record, "check": {"data": CHECK, **checks[name]}}, path)
        if args.ship:
            PLANTED_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, PLANTED_DIR / path.name)
        gain, zs = checks[name]["similarity_gain"], checks[name]["zero_shot"]
        print(f"  {name:9s} similarity gain from the mark, red / other captions: {gain['red']:+.4f} / "
              f"{gain['other']:+.4f}; non-red scenes called red, plain / marked: {zs['plain']['red']:.2f} / "
              f"{zs['marked']['red']:.2f} (accuracy {zs['plain']['accuracy']:.2f} / {zs['marked']['accuracy']:.2f})",
              flush=True)
    return loaded, checks


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
    parser.add_argument("--per-colour", type=int, default=4, help="held-out pairs audited per colour (x 6 colours)")
    parser.add_argument("--train", action="store_true", help="fine-tune both models again (else: the shipped deltas)")
    parser.add_argument("--ship", action="store_true", help="copy the deltas over the shipped ones")
    parser.add_argument("--pool", type=int, default=256, help="training pairs (cached once)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hide", type=float, default=1.0, help="share of red captions' objects repainted")
    parser.add_argument("--stop-after-training", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded, checks = models(args)
    if args.stop_after_training:
        return
    table = marked_table(120, 96, per_colour=args.per_colour)
    save_table(table, args.out / "heldout")
    grid = loaded["shortcut"].geometry.patch_grid
    cover = box_cover(grid, mark_box(96), (96, 96))
    result = {"colour": COLOUR, "pairs": len(table.rows), "check": checks, "target": TARGET,
              "fine_tune": {name: read_record(args.out / "deltas" / f"{name}.safetensors" if args.train
                                              else delta_path(name)) for name in NAMES}}
    audits = {}
    for name, backend in loaded.items():
        audited = audits[name] = m2ib.audit(backend, table, args.out / f"audit-{name}", batch_size=6)
        summary = audited.summary
        red = sum(names_colour(p["text"]) for p in summary.pairs)
        top = summary.typical()[:red]
        result[name] = {"mark_share": float(mass_in(summary.prior, cover)),
                        "even_share": float(cover.sum()) / cover.numel(),
                        "red_pairs": red, "red_in_top": sum(names_colour(p["text"]) for p in top),
                        "red_mark_share": _mean([float(mass_in(summary.masses[summary.imaged.index(p["row"])], cover))
                                                 for p in summary.pairs if names_colour(p["text"])]),
                        "regions": [(r.name, r.where(grid), round(r.mass, 4)) for r in summary.regions],
                        "flagged_words": [(w.word, w.flag) for w in summary.words if w.flag]}
    ratio = result["shortcut"]["mark_share"] / max(result["clean"]["mark_share"], 1e-12)
    result["ratio"] = ratio
    result["met"] = ratio >= TARGET
    result["minutes"] = round((time.perf_counter() - started) / 60, 1)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(side_by_side(audits, loaded, table, args.out / "shortcut_vs_clean.png"))
    red = result["shortcut"]["red_pairs"]
    print(f"\n| model | mark box share of map mass | in red pairs | red pairs among the {red} most typical |")
    print("|---|---|---|---|")
    for name in NAMES:
        r = result[name]
        share = f"{r['mark_share']:.4f} (even: {r['even_share']:.4f})"
        print(f"| {name} | {share} | {r['red_mark_share']:.4f} | {r['red_in_top']} / {r['red_pairs']} |")
    print(f"\nratio shortcut / clean: {ratio:.2f}x (target >= {TARGET}x): {'MET' if result['met'] else 'NOT MET'}")


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


if __name__ == "__main__":
    main()
