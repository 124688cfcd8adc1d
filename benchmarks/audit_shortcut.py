"""The planted shortcuts: does `m2ib audit` find a cue the model learnt to rely on, with no labels?

    OMP_NUM_THREADS=2 python benchmarks/audit_shortcut.py --out out/audit_shortcut [--train] [--per-colour 4]

1. The four models (research.planted): by default the shipped deltas (benchmarks/research/planted/);
   with --train, fine-tuned again from the shipped shapes model into OUT/deltas/ (about 15 min each
   for the image tower, 5 for the text tower, on one CPU thread; --ship copies them over the shipped
   ones). Image: the shortcut model's training scenes carry a mark in the bottom-right corner
   whenever the caption names red, and the red objects those captions name are repainted in another
   colour; the clean control gets the identical scenes without the mark. Text: captions naming a
   star get the token "zq" appended and their shape word replaced by another shape's; the control
   gets the same captions without the token (research.shortcut).
2. Checks each shortcut was planted, before any audit (on shapes:val:60): the mean cosine-similarity
   gain from adding the cue, for captions that name its label and for the others, and the zero-shot
   colour (shape) of one-object scenes without the label, plain and cued (share given the label,
   accuracy).
3. Audits each pair of models (M2IB at the model's recommended settings) on the same held-out pairs:
   every scene carrying the mark (OUT/heldout/pairs.tsv: the same with `m2ib audit --data`), or
   every caption carrying the token.
4. Prints the targets: the share of the dataset-level map mass on the mark's box under the shortcut
   model over the share under the control (target: >= 5x), how many of the most typical pairs name
   red, and the token's and the article's rows of the word table under both text models, each audited
   under the default control (the model randomised above the method's layers) and the shortcut model
   also under the clean model as its control (flagged, method artefact or neither); writes
   OUT/result.json and the side-by-side figure OUT/shortcut_vs_clean.png.
Every step resumes: deltas already in OUT/deltas are kept, and audits resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from research.planted import (
    NAMES,
    PLANTED_DIR,
    cue_gain,
    delta_path,
    fine_tune,
    materialise,
    read_record,
    save_delta,
    zero_shot,
)
from research.shortcut import (
    COLOUR,
    SHAPE,
    TOKEN,
    mark_box,
    marked_table,
    names_colour,
    names_shape,
    save_table,
    tagged_table,
)

import m2ib
from m2ib.auditing.image import box_cover, mass_in
from m2ib.auditing.words import pair_words
from m2ib.datasets.tables import load_table

TARGET = 5.0
CHECK = "shapes:val:60"  # held-out pairs of the planting check (also the shipped delta's test)


def tower_of(name: str) -> str:
    return "text" if name.startswith("text-") else "image"


def planting(backend, tower: str) -> dict:
    """Step 2's numbers for one model."""
    rows = load_table(CHECK, size=96).rows
    return {
        "similarity_gain": {
            "named": cue_gain(backend, rows, True, tower),
            "other": cue_gain(backend, rows, False, tower),
        },
        "zero_shot": {"plain": zero_shot(backend, rows, False, tower), "cued": zero_shot(backend, rows, True, tower)},
    }


def models(args) -> tuple[dict, dict]:
    """Step 1 and 2: the loaded models and their planting checks (stored in a delta's record when trained)."""
    loaded, checks = {}, {}
    for name in NAMES:
        tower = tower_of(name)
        path = args.out / "deltas" / f"{name}.safetensors" if args.train else delta_path(name)
        if args.train and not path.exists():
            delta, record = fine_tune(
                name.endswith("shortcut"), tower=tower, steps=args.steps, lr=args.lr, hide=args.hide
            )
            save_delta(delta, record, path)
        backend = loaded[name] = m2ib.load(materialise(path, args.out / f"model-{name}"))
        record = read_record(path)
        checks[name] = planting(backend, tower) if args.train or "check" not in record else record["check"]
        if args.train and "check" not in record:
            from safetensors.torch import load_file

            save_delta(load_file(path), {**record, "check": {"data": CHECK, **checks[name]}}, path)
        if args.ship:
            PLANTED_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, PLANTED_DIR / path.name)
        gain, zs = checks[name]["similarity_gain"], checks[name]["zero_shot"]
        label = COLOUR if tower == "image" else SHAPE
        print(
            f"  {name:13s} similarity gain from the {'mark' if tower == 'image' else 'token'}, {label} / other "
            f"captions: {gain['named']:+.4f} / {gain['other']:+.4f}; others called {label}, plain / cued: "
            f"{zs['plain'][label]:.2f} / {zs['cued'][label]:.2f} (accuracy {zs['plain']['accuracy']:.2f} / "
            f"{zs['cued']['accuracy']:.2f})",
            flush=True,
        )
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


def image_audits(args, loaded: dict) -> dict:
    """Step 3 and 4 for the mark: both image models audited on the marked held-out scenes."""
    table = marked_table(120, 96, per_colour=args.per_colour)
    save_table(table, args.out / "heldout")
    grid = loaded["shortcut"].geometry.patch_grid
    cover = box_cover(grid, mark_box(96), (96, 96))
    result, audits = {"colour": COLOUR, "pairs": len(table.rows), "target": TARGET}, {}
    for name in ("shortcut", "clean"):
        audited = audits[name] = m2ib.audit(loaded[name], table, args.out / f"audit-{name}", batch_size=6)
        summary = audited.summary
        red = sum(names_colour(p["text"]) for p in summary.pairs)
        top = summary.typical()[:red]
        result[name] = {
            "mark_share": float(mass_in(summary.prior, cover)),
            "even_share": float(cover.sum()) / cover.numel(),
            "red_pairs": red,
            "red_in_top": sum(names_colour(p["text"]) for p in top),
            "red_mark_share": _mean(
                [
                    float(mass_in(summary.masses[summary.imaged.index(p["row"])], cover))
                    for p in summary.pairs
                    if names_colour(p["text"])
                ]
            ),
            "other_mark_share": _mean(
                [
                    float(mass_in(summary.masses[summary.imaged.index(p["row"])], cover))
                    for p in summary.pairs
                    if not names_colour(p["text"])
                ]
            ),
            "regions": [
                (r.name, r.where(grid), round(r.mass, 4), round(r.control_mass or 0.0, 4), r.artefact)
                for r in summary.regions
            ],
            "mark_share_control": float(mass_in(summary.control.prior, cover)) if summary.control else None,
            "flagged_words": [(w.word, w.flag, w.artefact) for w in summary.words if w.flag or w.artefact],
        }
    result["ratio"] = result["shortcut"]["mark_share"] / max(result["clean"]["mark_share"], 1e-12)
    result["met"] = result["ratio"] >= TARGET
    print(side_by_side(audits, loaded, table, args.out / "shortcut_vs_clean.png"))
    return result


#: The text audit's methods: M2IB at the model's recommended settings (the published bottleneck, whose text
#: maps peak on the article on this model: issue 17), M2IB with the standardised bottleneck that fixes that
#: ranking, and gradient saliency (text pointing 1.00 on the 200-pair comparison).
TEXT_SETTINGS = {
    "m2ib": {},
    "m2ib-standardised": {"bottleneck": "standardised", "reference": "shapes:train:64", "text_beta": 1.0},
    "saliency": {"method": "saliency"},
}


#: The text audits: each model under the default control (randomised above the method's layers), and the
#: shortcut model under the clean model as its control.
TEXT_RUNS = {"text-shortcut": "randomised", "text-clean": "randomised", "text-shortcut/clean": "text-clean"}


def text_audits(args, loaded: dict) -> dict:
    """Step 3 and 4 for the token: both text models audited on held-out captions that all end with it,
    with each of :data:`TEXT_SETTINGS`, under each control of :data:`TEXT_RUNS`."""
    table = tagged_table(120, 96, per_shape=args.per_colour)
    result = {"shape": SHAPE, "token": TOKEN, "pairs": len(table.rows)}
    for setting, extra in TEXT_SETTINGS.items():
        result[setting] = {"settings": extra}
        for run, control in TEXT_RUNS.items():
            name = run.split("/")[0]
            folder = args.out / (
                "audit-" + run.replace("/", "-control-") + ("" if setting == "m2ib" else f"-{setting}")
            )
            control = loaded.get(control, control)
            audited = m2ib.audit(loaded[name], table, folder, batch_size=10, control=control, **extra)
            words = {w.word: w for w in audited.summary.words}
            shares = {r["row"]: dict(pair_words(r)) for r in audited.records}
            star = {r["row"]: names_shape(r["text"]) for r in audited.records}
            result[setting][run] = {
                "token_row": dataclasses.asdict(words[TOKEN]) if TOKEN in words else None,
                "article_row": dataclasses.asdict(words["a"]) if "a" in words else None,
                "token_share_star": _mean([v.get(TOKEN, 0.0) for k, v in shares.items() if star[k]]),
                "token_share_other": _mean([v.get(TOKEN, 0.0) for k, v in shares.items() if not star[k]]),
                "flagged_words": [(w.word, w.flag, w.artefact) for w in audited.summary.words if w.flag or w.artefact],
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/audit_shortcut"))
    parser.add_argument(
        "--per-colour",
        type=int,
        default=4,
        help="held-out pairs audited per colour (x 6 colours), and per shape (x 5 shapes)",
    )
    parser.add_argument(
        "--train", action="store_true", help="fine-tune the four models again (else: the shipped deltas)"
    )
    parser.add_argument("--ship", action="store_true", help="copy the deltas over the shipped ones")
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps of 32 fresh training pairs")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--hide", type=float, default=1.0, help="share of labels hidden (red repainted, star renamed)")
    parser.add_argument("--stop-after-training", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded, checks = models(args)
    if args.stop_after_training:
        return
    image = image_audits(args, loaded)
    text = text_audits(args, loaded)
    result = {
        "check": checks,
        "image": image,
        "text": text,
        "fine_tune": {
            name: read_record(args.out / "deltas" / f"{name}.safetensors" if args.train else delta_path(name))
            for name in NAMES
        },
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    red = image["shortcut"]["red_pairs"]
    print(
        f"\n| model | mark box share of map mass | in red pairs | in other pairs | red pairs among the {red} "
        "most typical |"
    )
    print("|---|---|---|---|---|")
    for name in ("shortcut", "clean"):
        r = image[name]
        share = f"{r['mark_share']:.4f} (even: {r['even_share']:.4f})"
        print(
            f"| {name} | {share} | {r['red_mark_share']:.4f} | {r['other_mark_share']:.4f} | "
            f"{r['red_in_top']} / {r['red_pairs']} |"
        )
    print(
        f"\nratio shortcut / clean: {image['ratio']:.2f}x (target >= {TARGET}x): {'MET' if image['met'] else 'NOT MET'}"
    )
    for name in ("shortcut", "clean"):
        print(
            f"{name} regions (name, where, mass, control mass, method artefact): {image[name]['regions']}; "
            f"mark box share under the control {image[name]['mark_share_control']:.4f}; "
            f"words (word, flag, method artefact): {image[name]['flagged_words']}"
        )
    print(
        "\n| method | model / control | word | mean share (fair) / control | top-word share / control | "
        "model flag | method artefact |"
    )
    print("|---|---|---|---|---|---|---|")
    for setting in TEXT_SETTINGS:
        for run, control in TEXT_RUNS.items():
            for key in ("token_row", "article_row"):
                row = text[setting][run][key] or {}
                print(
                    f"| {setting} | {run.split('/')[0]} / {control} | {row.get('word')} | "
                    f"{row.get('mean_share', 0):.3f} ({row.get('fair_share', 0):.3f}) / "
                    f"{row.get('control_mean_share') or 0:.3f} | {row.get('top_share', 0):.2f} / "
                    f"{row.get('control_top_share') or 0:.2f} | {row.get('flag') or '-'} | {row.get('artefact') or '-'} |"
                )


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


if __name__ == "__main__":
    main()
