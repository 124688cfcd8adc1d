"""The ``m2ib`` command: a thin argparse front-end over the API (no logic of its own).

Method settings become flags automatically from the methods' frozen dataclasses, so a
setting is declared once, with its help text, in the method's file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, M2IBError

EXIT_BAD_INPUT = 2


def _settings_fields() -> dict[str, tuple[dataclasses.Field, type]]:
    """Every setting of every registered method: name -> (field, python type)."""
    from .methods import REGISTRY

    fields: dict[str, tuple[dataclasses.Field, type]] = {}
    for method in REGISTRY.values():
        hints = typing.get_type_hints(method.Settings)
        for f in dataclasses.fields(method.Settings):
            if f.name in fields:
                continue
            kind = hints[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            if args:  # Optional[X] / X | None
                kind = args[0]
            fields[f.name] = (f, kind)
    return fields


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from .methods import REGISTRY

    group = parser.add_argument_group("method settings (defaults: the method's published ones)")
    for name, (f, kind) in _settings_fields().items():
        owners = [m for m, cls in REGISTRY.items() if name in {x.name for x in dataclasses.fields(cls.Settings)}]
        default = "model's recommended or the paper's" if f.default is None else f.default
        help_text = f"{f.metadata.get('help', '')} (default: {default}; methods: {', '.join(owners)})"
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, type=kind, default=None, help=help_text,
                           choices=f.metadata.get("choices"))


def _model_help() -> str:
    from .models import BUILTIN_MODELS, DEFAULT_MODEL

    names = ", ".join(BUILTIN_MODELS)
    return (f"built-in name ({names}), Hugging Face hub id (e.g. openai/clip-vit-base-patch32) or a local "
            f"directory (default: {DEFAULT_MODEL})")


def build_parser() -> argparse.ArgumentParser:
    from .methods import REGISTRY
    from .models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="m2ib", description="Explain why a CLIP-style model matches an image "
                                     "with a text (M2IB and baselines).")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="explain image-text pairs and write figures and maps",
                        description="Explain one image-text pair (IMAGE TEXT) or many (--pairs FILE). Writes "
                        "STEM.png (figure), STEM.npz (maps) and STEM.json (settings, scores) into --out.")
    ex.add_argument("image", nargs="?", help="image file")
    ex.add_argument("text", nargs="?", help="text to explain against the image")
    ex.add_argument("--pairs", type=Path, help="TSV/CSV of pairs: columns 'image' and 'text' (or 'caption') "
                    "with a header, or caption then image path without one (the M2IB reference format); "
                    "relative paths are read from the file's folder")
    ex.add_argument("--model", default=DEFAULT_MODEL, help=_model_help())
    ex.add_argument("--method", default="m2ib", choices=list(REGISTRY), help="attribution method")
    ex.add_argument("--modalities", default="image,text", help="sides to explain: image,text | image | text")
    ex.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ex.add_argument("--batch-size", type=int, default=16, help="pairs fitted together (default: 16)")
    ex.add_argument("--box", action="append", default=[], metavar="X,Y,W,H",
                    help="draw a box on the figure, in the original image's pixels (repeatable)")
    ex.add_argument("--no-figure", action="store_true", help="write maps and JSON only")
    ex.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs exist (else skipped)")
    _add_settings(ex)

    sub.add_parser("list", help="list methods and built-in models")
    sub.add_parser("train-shapes", add_help=False,
                   help="train a small CLIP on the synthetic shapes world (see m2ib train-shapes --help)")
    return parser


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """(image path, text) rows of a TSV/CSV; see the --pairs help."""
    if not path.exists():
        raise InputError(f"{path}: pairs file not found")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: no rows")
    header = [c.strip().lower() for c in rows[0]]
    if "image" in header and ("text" in header or "caption" in header):
        i_img, i_txt = header.index("image"), header.index("text" if "text" in header else "caption")
        rows = rows[1:]
    else:
        i_txt, i_img = 0, 1  # the M2IB reference's order: caption, then image
    pairs = []
    for n, row in enumerate(rows, 1):
        if len(row) <= max(i_img, i_txt):
            raise InputError(f"{path}: row {n} has {len(row)} column(s); expected an image and a text")
        image = Path(row[i_img].strip())
        pairs.append((str(image if image.is_absolute() else path.parent / image), row[i_txt]))
    return pairs


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers X,Y,W,H") from None
    return x, y, w, h


def _stem(index: int | None, image: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image).stem) or "image"
    return name if index is None else f"{index:05d}_{name}"


def _explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .api import explain, load
    from .inputs import load_image

    settings = {name: getattr(args, name) for name in _settings_fields() if getattr(args, name) is not None}
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    boxes = [_parse_box(b) for b in args.box]
    if args.pairs is not None:
        if args.image or args.text:
            raise InputError("give IMAGE TEXT or --pairs FILE, not both")
        pairs = _read_pairs(args.pairs)
        stems = [_stem(i, image) for i, (image, _) in enumerate(pairs)]
    else:
        if args.image is None or args.text is None:
            raise InputError("give an IMAGE and a TEXT (or --pairs FILE); see m2ib explain --help")
        pairs = [(args.image, args.text)]
        stems = [_stem(None, args.image)]
    backend = load(args.model, device=args.device)
    todo = [i for i in range(len(pairs)) if args.overwrite or not (args.out / f"{stems[i]}.json").exists()]
    if len(todo) < len(pairs):
        print(f"m2ib: {len(pairs) - len(todo)} pair(s) already in {args.out}, skipped (--overwrite to redo)",
              file=sys.stderr)
    failed = 0
    with tqdm(total=len(todo), desc=args.method, unit="pair", disable=len(todo) < 2) as bar:
        for start in range(0, len(todo), args.batch_size):
            rows, images, originals = [], [], []
            for i in todo[start:start + args.batch_size]:
                try:
                    image, _ = load_image(pairs[i][0])
                except InputError as exc:
                    if len(pairs) == 1:
                        raise
                    failed += 1
                    tqdm.write(f"m2ib: skipped row {i + 1}: {exc}", file=sys.stderr)
                    continue
                rows.append(i)
                images.append(image)
                originals.append(image.size)
            if rows:
                results = explain(backend, images, [pairs[i][1] for i in rows], method=args.method,
                                  modalities=modalities, batch_size=args.batch_size, progress=False, **settings)
                for i, size, exp in zip(rows, originals, results):
                    exp.image_source = pairs[i][0]
                    shown = [backend.preprocessing.map_box(b, size) for b in boxes] if boxes else None
                    paths = exp.save(args.out, stems[i], figure=False if args.no_figure else None, boxes=shown)
                    if len(pairs) == 1:
                        for path in paths.values():
                            print(path)
            bar.update(len(todo[start:start + args.batch_size]))
    if failed:
        print(f"m2ib: {failed} of {len(pairs)} pair(s) failed (see above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _list(_: argparse.Namespace) -> int:
    from .methods import REGISTRY
    from .models import BUILTIN_MODELS

    print("methods:")
    for name, cls in REGISTRY.items():
        print(f"  {name:16s} {cls.title} {cls.paper}")
    print("built-in models:")
    for name, spec in BUILTIN_MODELS.items():
        print(f"  {name:16s} {spec.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-shapes"]:  # its own parser: every TrainConfig field is a flag
        from .training import main as train_main

        return train_main(argv[1:], prog="m2ib train-shapes")
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: dict[str, Any] = {"explain": _explain, "list": _list}
    try:
        return handlers[args.command](args)
    except M2IBError as exc:
        print(f"m2ib: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("m2ib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
