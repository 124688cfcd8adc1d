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


def _owners(name: str) -> list[str]:
    """Registered methods that have the setting ``name``."""
    from .methods import REGISTRY

    return [m for m, cls in REGISTRY.items() if name in {x.name for x in dataclasses.fields(cls.Settings)}]


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from .methods import REGISTRY

    group = parser.add_argument_group("method settings (defaults: the method's published ones; a setting "
                                      "applies to the methods listed with it)")
    for name, (f, kind) in _settings_fields().items():
        owners = _owners(name)
        described: dict[tuple[str, str], list[str]] = {}  # (help, default) -> methods
        for owner in owners:
            own = next(x for x in dataclasses.fields(REGISTRY[owner].Settings) if x.name == name)
            # a None default is described by the help text itself (a rule, or the model's recommendation)
            default = "" if own.default is None else f"default: {own.default}"
            described.setdefault((own.metadata.get("help", ""), default), []).append(owner)
        if len(described) == 1:
            (text, default), = described
            help_text = f"{text} ({default + '; ' if default else ''}methods: {', '.join(owners)})"
        else:
            help_text = "; ".join(f"{', '.join(ms)}: {text}" + (f" ({default})" if default else "")
                                  for (text, default), ms in described.items())
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, type=kind, default=None, help=help_text,
                           choices=f.metadata.get("choices"))


def _model_help() -> str:
    from .models import BUILTIN_MODELS, DEFAULT_MODEL

    names = ", ".join(BUILTIN_MODELS)
    return (f"built-in name ({names}), Hugging Face hub id (e.g. openai/clip-vit-base-patch32, or hf:ID), a local "
            f"directory, open_clip:ARCH@TAG / open_clip:hf-hub:ORG/REPO, clip:ViT-B/32 / clip:FILE.pt "
            f"(@random: random weights; see README, Model families) (default: {DEFAULT_MODEL})")


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
    ex.add_argument("--method", default="m2ib", metavar="NAME[,NAME...]|all",
                    help=f"attribution method: one of {', '.join(REGISTRY)}; a comma list or 'all' writes one "
                    "comparison figure per pair with a row per method (default: m2ib)")
    ex.add_argument("--modalities", default=None, help="sides to explain: image,text | image | text (default: "
                    "every side the method can explain)")
    ex.add_argument("--negative", action="append", default=[], metavar="TEXT",
                    help="a text to tell the pair apart from (repeatable): the target becomes the margin of the "
                    "image's similarity to TEXT over its mean similarity to the negatives (off by default)")
    ex.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ex.add_argument("--batch-size", type=int, default=16, help="pairs fitted together (default: 16)")
    ex.add_argument("--box", action="append", default=[], metavar="X,Y,W,H",
                    help="draw a box on the figure, in the original image's pixels (repeatable)")
    ex.add_argument("--no-figure", action="store_true", help="write maps and JSON only")
    ex.add_argument("--overwrite", action="store_true", help="redo pairs whose outputs exist (else skipped)")
    _add_settings(ex)

    sub.add_parser("list", help="list methods and built-in models")
    _add_evaluate(sub)
    sub.add_parser("serve", add_help=False,
                   help="web viewer on 127.0.0.1 (pip install 'm2ib[viewer]'; see m2ib serve --help)")
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


def _methods(spec: str) -> list[str]:
    """``--method`` value -> method names (a name, a comma list, or 'all')."""
    from .methods import REGISTRY

    if spec.strip() == "all":
        return list(REGISTRY)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise InputError("--method is empty: give a method name, a comma list or 'all'")
    for name in names:
        if name not in REGISTRY:
            raise InputError(f"unknown method {name!r}: choose from {', '.join(REGISTRY)}, or 'all'")
    return list(dict.fromkeys(names))


def _settings_for(methods: list[str], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's share of the settings given; a setting no chosen method has is an error."""
    if len(methods) == 1:
        return {methods[0]: settings}  # the method itself reports unknown settings
    per = {m: {} for m in methods}
    for name, value in settings.items():
        owners = [m for m in _owners(name) if m in per]
        if not owners:
            raise InputError(f"setting {name} applies to none of {', '.join(methods)} (it is a setting of "
                             f"{', '.join(_owners(name))})")
        for m in owners:
            per[m][name] = value
    return per


def _explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .api import explain, load
    from .inputs import load_image
    from .methods import REGISTRY

    methods = _methods(args.method)
    settings = {name: getattr(args, name) for name in _settings_fields() if getattr(args, name) is not None}
    per_method = _settings_for(methods, settings)
    modalities = None
    if args.modalities is not None:
        modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    negatives = list(args.negative) or None
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
    with tqdm(total=len(todo), desc=",".join(methods), unit="pair", disable=len(todo) < 2) as bar:
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
                results: dict[str, list] = {}
                for method in methods:
                    cls = REGISTRY[method]
                    sides = modalities
                    if sides is not None and len(methods) > 1:  # each method explains what it can
                        sides = tuple(m for m in sides if m in cls.modalities)
                        if not sides:
                            continue
                    results[method] = explain(
                        backend, images, [pairs[i][1] for i in rows], method=method, modalities=sides,
                        negatives=negatives if cls.uses_target else None, batch_size=args.batch_size,
                        progress=False, **per_method[method])
                for k, (i, size) in enumerate(zip(rows, originals)):
                    shown = [backend.preprocessing.map_box(b, size) for b in boxes] if boxes else None
                    exps = {m: r[k] for m, r in results.items()}
                    for exp in exps.values():
                        exp.image_source = pairs[i][0]
                    if len(methods) == 1:
                        paths = exps[methods[0]].save(args.out, stems[i], figure=False if args.no_figure else None,
                                                      boxes=shown)
                    else:
                        paths = _save_comparison(exps, args.out, stems[i], not args.no_figure, shown)
                    if len(pairs) == 1:
                        for path in paths.values():
                            print(path)
            bar.update(len(todo[start:start + args.batch_size]))
    if failed:
        print(f"m2ib: {failed} of {len(pairs)} pair(s) failed (see above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _save_comparison(exps: dict[str, Any], out: Path, stem: str, figure: bool,
                     boxes: list | None) -> dict[str, Path]:
    """One pair explained by several methods: STEM.png (a row per method), STEM.npz
    (``METHOD/image_map`` ...), STEM.json (each method's settings and scores)."""
    import json
    import warnings

    import numpy as np

    from .explanation import _jsonable
    from .fileio import atomic_write
    from .methods import REGISTRY

    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(exps.values()))
    arrays = {f"{m}/{k}": v.numpy() for m, exp in exps.items() for k, v in exp._tensors().items()
              if v is not None and k != "image"}
    arrays["image"] = first.image.numpy()
    paths = {"npz": atomic_write(out / f"{stem}.npz", lambda f: np.savez_compressed(f, **arrays))}
    meta = {"image": first.image_source, "text": first.text, "tokens": first.tokens, "model": first.model,
            "similarity": first.similarity, "methods": {m: exp.to_dict() for m, exp in exps.items()}}
    text = json.dumps(meta, indent=2, default=_jsonable)
    paths["json"] = atomic_write(out / f"{stem}.json", lambda f: f.write(text.encode()))
    if figure:
        try:
            from .viz.figure import comparison_figure
            rows = [(REGISTRY[m].title, exp.image_map, exp.word_shading()) for m, exp in exps.items()]
            picture = comparison_figure(first.image, rows, first.tokens, title=first.text,
                                        special_tokens=first.special_tokens, boxes=boxes)
        except ImportError:
            warnings.warn("figure not written: install matplotlib (pip install 'm2ib[figures]')", stacklevel=2)
        else:
            paths["png"] = atomic_write(out / f"{stem}.png", lambda f: picture.save(f, format="PNG"))
    return paths


def _list(_: argparse.Namespace) -> int:
    from .methods import REGISTRY
    from .models import BUILTIN_MODELS

    print("methods:")
    for name, cls in REGISTRY.items():
        print(f"  {name:16s} {cls.title} ({', '.join(cls.modalities)}) {cls.paper}")
    print("built-in models:")
    for name, spec in BUILTIN_MODELS.items():
        print(f"  {name:16s} {spec.description}")
    return 0


EXIT_UNFINISHED = 3  # evaluate --time-limit: stopped early, results kept


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand's parser (logic: m2ib.evaluation.runner)."""
    from .metrics import METRIC_NAMES, PROTOCOLS
    from .metrics.roar import BUDGETS
    from .models import DEFAULT_MODEL

    ev = sub.add_parser("evaluate", help="measure attribution metrics over a dataset (resumable)",
                        description="Explain every pair of --data with every method and measure the metrics. Each "
                        "finished (pair, method) is appended to OUT/results.jsonl at once (with provenance); "
                        "re-running the same command resumes. At the end: OUT/summary.md, OUT/summary.csv "
                        "(mean and 95% CI per method and metric) and OUT/plots/*.png.", conflict_handler="resolve")
    _add_settings(ev)  # first: --samples below replaces the methods' own --samples (see --method-samples)
    ev.add_argument("--data", required=True, help="TSV/CSV of caption and image path (the M2IB reference's "
                    "format, or a header with image and text/caption columns), an MS-CXR-style CSV (image, "
                    "phrase, x, y, w, h), or shapes:SPLIT:N[:KIND] (e.g. shapes:test:200)")
    ev.add_argument("--methods", default="m2ib", metavar="NAME[,NAME...]|all",
                    help="methods to compare (default: m2ib); when resuming, some of the run's methods "
                    "only, to finish those first")
    ev.add_argument("--metrics", default="confidence,deletion,road,localisation", metavar="NAME[,NAME...]|all",
                    help=f"of {', '.join(METRIC_NAMES)} (default: confidence,deletion,road,localisation; "
                    "roar needs shapes data)")
    ev.add_argument("--protocols", default=",".join(PROTOCOLS), help="confidence protocols: m2ib (the public "
                    "reference's, exactly) and/or mask (corrected) (default: both)")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=_model_help())
    ev.add_argument("--out", type=Path, required=True, help="output directory")
    ev.add_argument("--samples", dest="rows", type=int, default=None, help="evaluate N rows drawn at random "
                    "with --seed (default: every row)")
    ev.add_argument("--method-samples", dest="samples", type=int, default=None, help="the methods' own 'samples' "
                    "setting (M2IB: noise copies per step; Kernel SHAP: coalitions), which --samples means in "
                    "m2ib explain")
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    ev.add_argument("--deletion-steps", type=int, default=20, help="steps of the deletion/insertion curves "
                    "(default: 20)")
    ev.add_argument("--iou-k", type=float, default=None, help="share of pixels in the top-k region for the IoU "
                    "(default: the ground-truth mask's own area)")
    ev.add_argument("--sanity-steps", type=int, default=None, help="cascade points of the sanity check, evenly "
                    "spaced from the head down (default: every block)")
    ev.add_argument("--roar-budget", default="tiny", choices=list(BUDGETS), help="ROAR+ scale: tiny and small "
                    "run on a CPU (reduced: few scenes, a tiny retrained model), full needs a GPU (default: tiny)")
    ev.add_argument("--setting", action="append", default=[], metavar="METHOD.NAME=VALUE",
                    help="one method's setting only, e.g. rise.masks=500 or kernelshap.samples=512 (repeatable; "
                    "the plain setting flags apply to every method that has the setting)")
    ev.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="start no new pair after "
                    f"this long; the summary covers what is done (exit status {EXIT_UNFINISHED}; re-run to go on)")
    ev.add_argument("--batch-size", type=int, default=None, help="rows explained together by the batched path "
                    "(default: 1 locally, 8 with --ray); the numbers do not change beyond float rounding")
    ray = ev.add_argument_group("Ray (pip install 'm2ib[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run on Ray: no ADDRESS starts a local instance; 'auto' or ray://HOST:PORT joins a "
                     "cluster (--out must then be a path every node can write)")
    ray.add_argument("--ray-actors", type=int, default=2, help="actor pool size; each actor loads the model once "
                     "(default: 2)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="logical CPUs per actor, also its "
                     "torch threads (default: 1)")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 when the "
                     "cluster has GPUs, else 0)")
    ray.add_argument("--ray-object-store", type=int, default=None, metavar="MB", help="object store of a local "
                     "instance (default: Ray's)")


def _one_setting(item: str, methods: list[str]) -> tuple[str, str, Any]:
    """``METHOD.NAME=VALUE`` -> (method, setting, value of the setting's type)."""
    from .methods import REGISTRY

    target, eq, text = item.partition("=")
    method, dot, name = target.strip().partition(".")
    if not eq or not dot or method not in methods:
        raise InputError(f"--setting {item!r}: use METHOD.NAME=VALUE with METHOD one of {', '.join(methods)}")
    fields = _settings_fields_of(REGISTRY[method])
    if name not in fields:
        raise InputError(f"--setting {item!r}: {method} has no setting {name!r} (it has {', '.join(fields)})")
    kind = fields[name]
    try:
        if kind is bool:
            value: Any = {"true": True, "1": True, "false": False, "0": False}[text.strip().lower()]
        else:
            value = kind(text.strip())
    except (KeyError, ValueError):
        raise InputError(f"--setting {item!r}: {text!r} is not a {kind.__name__}") from None
    return method, name, value


def _settings_fields_of(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls.Settings)
    out = {}
    for f in dataclasses.fields(cls.Settings):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        out[f.name] = args[0] if args else kind
    return out


def _reproducing(argv: list[str]) -> list[str]:
    """The arguments without ``--time-limit``: it decides when a run pauses, not its results, and
    the recorded command is the one that reproduces them."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--time-limit":
            skip = True
        elif not arg.startswith("--time-limit="):
            out.append(arg)
    return out


def _evaluate(args: argparse.Namespace) -> int:
    import shlex

    from .api import load
    from .datasets.tables import load_table
    from .evaluation.runner import MetricConfig, run_evaluation
    from .metrics import METRIC_NAMES

    methods = _methods(args.methods)
    names = list(METRIC_NAMES) if args.metrics.strip() == "all" else \
        [m.strip() for m in args.metrics.split(",") if m.strip()]
    config = MetricConfig(names=tuple(dict.fromkeys(names)),
                          protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
                          deletion_steps=args.deletion_steps, iou_k=args.iou_k, sanity_steps=args.sanity_steps,
                          roar_budget=args.roar_budget)
    settings = {name: getattr(args, name) for name in _settings_fields() if getattr(args, name) is not None}
    seed = settings.pop("seed", 0)
    per_method = _settings_for(methods, settings) if settings else {}
    for item in args.setting:
        method, name, value = _one_setting(item, methods)
        per_method.setdefault(method, {})[name] = value
    backend = load(args.model, device=args.device)
    table = load_table(args.data, size=backend.geometry.image_size[0], samples=args.rows, seed=seed)
    command = "m2ib " + shlex.join(_reproducing(args.argv))
    if args.ray is None:
        result = run_evaluation(backend, table, methods, config, per_method, seed, args.out, command=command,
                                time_limit=args.time_limit, batch_size=args.batch_size or 1)
    else:
        from .evaluation.distributed import RayConfig, run_evaluation_ray

        store = None if args.ray_object_store is None else args.ray_object_store * 2 ** 20
        ray_config = RayConfig(address=None if args.ray == "local" else args.ray, actors=args.ray_actors,
                               batch_size=args.batch_size or RayConfig.batch_size,
                               cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor,
                               object_store_memory=store)
        result = run_evaluation_ray(backend, args.model, table, methods, config, per_method, seed, args.out,
                                    ray_config, device=args.device, command=command, time_limit=args.time_limit)
    if result.bad:
        print(f"m2ib: {len(result.bad)} of {table.total} row(s) could not be used; see {args.out / 'summary.md'}",
              file=sys.stderr)
    print(result.files.get("md", args.out / "summary.md"))
    return 0 if result.finished else EXIT_UNFINISHED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-shapes"]:  # its own parser: every TrainConfig field is a flag
        from .training import main as train_main

        return train_main(argv[1:], prog="m2ib train-shapes")
    if argv[:1] == ["serve"]:  # its own parser; gradio is an optional extra
        from .serve import main as serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # what `evaluate` records as the run's command
    handlers: dict[str, Any] = {"explain": _explain, "list": _list, "evaluate": _evaluate}
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
