"""``m2ib explain IMAGE TEXT --method NAME`` for an interaction method: one pair, one matrix.

Writes ``STEM_NAME.npz`` (the token x patch matrix and the image), ``STEM_NAME.json`` (tokens,
offsets, settings, completeness terms) and ``STEM_NAME.png`` (one panel per content word).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import REGISTRY, get_interaction


def interaction_settings(name: str, args: argparse.Namespace, registry: dict[str, Any]) -> dict[str, Any]:
    """The setting flags given, read with the interaction method's own fields (checked now)."""
    from ..settings import given_settings, settings_per_method

    values = settings_per_method([name], given_settings(args, registry), registry)[name]
    REGISTRY[name]().make_settings(**values)  # bad names and ranges: one line, before the model loads
    return values


def explain_interaction(args: argparse.Namespace, registry: dict[str, Any]) -> list[Path]:
    """Run one interaction method on the pair ``args.image``, ``args.text``; the paths written."""
    from .. import preflight
    from ..api import load
    from ..inputs import load_image
    from ..pairs import output_stem

    name = args.method.strip()
    if args.pairs is not None or args.image is None or args.text is None:
        raise InputError(f"{name} explains one pair: give IMAGE TEXT (--pairs is for first-order methods)")
    values = interaction_settings(name, args, registry)
    preflight.check_text(args.text)
    preflight.check_image_files([args.image])
    preflight.check_device(args.device)
    preflight.prepare_output_dir(args.out)
    method = get_interaction(name)
    backend = load(args.model, device=args.device)
    picture, source = load_image(args.image)
    result = method.interact(backend, backend.preprocess_images([picture], [source]), backend.tokenize([args.text]),
                             method.make_settings(**values))
    stem = f"{output_stem(None, args.image)}_{name}"
    return list(result.save(args.out, stem, figure=not args.no_figure).values())
