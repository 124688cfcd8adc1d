"""``m2ib explain IMAGE TEXT --method NAME`` (or ``--pairs FILE``) for an interaction method: a matrix per pair.

Writes ``STEM_NAME.npz`` (the token x patch matrix and the image), ``STEM_NAME.json`` (tokens,
offsets, settings, completeness terms) and ``STEM_NAME.png`` (one panel per content word) for
each pair; with ``--pairs`` the stems are numbered by row as for first-order methods
(:func:`m2ib.pairs.output_stem`), the file format is :func:`m2ib.pairs.read_pairs`'s, and a
re-run skips the pairs already written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InputError
from ..interactions.base import REGISTRY
from ..pairs import PairsOutcome


def interaction_settings(name: str, args: argparse.Namespace, registry: dict[str, Any]) -> dict[str, Any]:
    """The setting flags given, read with the interaction method's own fields (checked now)."""
    from ..settings import given_settings, settings_per_method

    values = settings_per_method([name], given_settings(args, registry), registry)[name]
    REGISTRY[name]().make_settings(**values)  # bad names and ranges: one line, before the model loads
    return values


def explain_interaction(args: argparse.Namespace, registry: dict[str, Any]) -> tuple[PairsOutcome, int]:
    """Run one interaction method on the pair ``args.image``, ``args.text`` or on every row of
    ``args.pairs``; (what was written, skipped and failed; the number of pairs)."""
    from .. import preflight
    from ..pairs import output_stem, read_pairs

    name = args.method.strip()
    values = interaction_settings(name, args, registry)
    if args.pairs is not None:
        if args.image or args.text:
            raise InputError("give IMAGE TEXT or --pairs FILE, not both")
        pairs = read_pairs(args.pairs)
        stems = [f"{output_stem(i, image)}_{name}" for i, (image, _) in enumerate(pairs)]
    else:
        if args.image is None or args.text is None:
            raise InputError(f"{name}: give an IMAGE and a TEXT (or --pairs FILE); see m2ib explain --help")
        preflight.check_text(args.text)
        preflight.check_image_files([args.image])
        pairs, stems = [(args.image, args.text)], [f"{output_stem(None, args.image)}_{name}"]
    preflight.check_device(args.device)
    preflight.prepare_output_dir(args.out)
    return interact_pairs(args, name, values, pairs, stems), len(pairs)


def interact_pairs(args: argparse.Namespace, name: str, values: dict[str, Any], pairs: list[tuple[str, str]],
                   stems: list[str]) -> PairsOutcome:
    """Each pair's matrix and files, one pair at a time (the model loaded once), each file written
    atomically as soon as its pair is done. Pairs whose JSON exists are skipped (unless
    ``--overwrite``); a row whose image or text cannot be used is skipped with one line on stderr
    and counted (with one pair, it raises)."""
    from tqdm.auto import tqdm

    from .. import preflight
    from ..api import load
    from ..inputs import load_image

    method = REGISTRY.get(name)()
    chosen = method.make_settings(**values)
    outcome = PairsOutcome()
    todo = [i for i in range(len(pairs)) if args.overwrite or not (args.out / f"{stems[i]}.json").exists()]
    outcome.already_done = len(pairs) - len(todo)
    backend = load(args.model, device=args.device) if todo else None
    with tqdm(total=len(todo), desc=name, unit="pair", disable=len(todo) < 2) as bar:
        for i in todo:
            image, text = pairs[i]
            try:
                preflight.check_text(text)
                picture, source = load_image(image)
                result = method.interact(backend, backend.preprocess_images([picture], [source]),
                                         backend.tokenize([text]), chosen)
            except InputError as exc:
                if len(pairs) == 1:
                    raise
                outcome.failed += 1
                bar.set_postfix(failed=outcome.failed)
                tqdm.write(f"m2ib: skipped row {i + 1}: {exc}", file=sys.stderr)
            else:
                outcome.written.append(result.save(args.out, stems[i], figure=False if args.no_figure else None))
            bar.update(1)
    return outcome
