"""``m2ib explain IMAGE PROMPT --answer TEXT --model DIR [--method NAME]``: a generative VLM's answer
explained by an answer method (:func:`m2ib.generative.explain_answer`; M2IB by default), writing
STEM.png, STEM.npz and STEM.json into --out.

The flags of the pairs pipeline that have no meaning for one answer are refused in one line, as
are setting flags the chosen answer method does not read. M2IB: ``--vision-beta`` is the answer's
beta (the bottleneck sits on the image tokens), ``--steps``, ``--lr``, ``--samples``,
``--init-alpha``, ``--var`` and ``--seed`` keep their meaning. The other answer methods read the
flags named after their settings (``--masks``, ``--window``, ``--baseline``, ``--layer``, ...); the
flags only answer methods have (:func:`answer_flag_methods`) are refused without ``--answer``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import interactions, status

#: explain's setting flags that the answer's fit reads, by the name it reads them under.
ANSWER_SETTINGS = {
    "vision_beta": "beta",
    "steps": "steps",
    "lr": "lr",
    "samples": "samples",
    "init_alpha": "init_alpha",
    "var": "var",
    "seed": "seed",
}


def answer_flag_methods() -> dict[str, Any]:
    """The answer methods whose settings are flags of their own name (M2IB's are renamed, above), keyed
    ``answer-NAME`` so that they sit beside the CLIP methods in explain's parser."""
    from ..generative.methods import ANSWER_METHODS

    return {f"answer-{name}": cls for name, cls in ANSWER_METHODS.items() if name != "m2ib"}


def refuse_answer_flags(args: argparse.Namespace) -> None:
    """Without --answer, a setting flag that only answer methods have is refused in one line."""
    from ..methods import REGISTRY
    from ..settings import given_settings

    clip = given_settings(args, {**REGISTRY, **interactions()})
    for name in given_settings(args, answer_flag_methods()):
        if name not in clip:
            raise InputError(
                f"--{name.replace('_', '-')} is a setting of the answer methods: it applies with --answer only"
            )


def _flags(names: Any) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names) or "none"


def _answer_settings(args: argparse.Namespace, method: Any) -> dict[str, Any]:
    """The setting flags given, read by the answer method's own fields (M2IB's renamed); any other is refused."""
    from ..methods import REGISTRY
    from ..settings import fields_of, given_settings

    fields = {f.name: f for f in fields_of(method.Settings)}
    rename = ANSWER_SETTINGS if method.name == "m2ib" else {name: name for name in fields}
    out = {}
    for name, value in given_settings(args, {**REGISTRY, **interactions(), **answer_flag_methods()}).items():
        if name not in rename:
            raise InputError(
                f"--{name.replace('_', '-')} does not apply to --answer with --method {method.name} "
                f"(it reads {_flags(rename)})"
            )
        out[rename[name]] = fields[rename[name]].parse(value)
    return out


def _check_flags(args: argparse.Namespace) -> None:
    refused = {
        "--pairs": args.pairs is not None,
        "--negative": bool(args.negative),
        "--modalities": args.modalities is not None,
        "--batch-size": args.batch_size is not None,
        "--box": bool(args.box),
    }
    given = [flag for flag, on in refused.items() if on]
    if given:
        raise InputError(f"{given[0]} does not apply to --answer (one image, one prompt, one answer)")
    if args.image is None or args.text is None:
        raise InputError("give an IMAGE and a PROMPT with --answer; see m2ib explain --help")


def run_answer(args: argparse.Namespace) -> int:
    from .. import preflight
    from ..generative import explain_answer
    from ..generative.loading import load_generative
    from ..generative.methods import ANSWER_METHODS, answer_method

    _check_flags(args)
    if args.method not in ANSWER_METHODS:
        raise InputError(
            f"--method {args.method}: --answer is explained by one answer method: {', '.join(ANSWER_METHODS)}"
        )
    method = answer_method(args.method)
    settings = method.make_settings(**_answer_settings(args, method))  # bad values: one line, before the model loads
    preflight.check_text(args.answer, "--answer")
    preflight.check_text(args.text, "the prompt")
    preflight.check_image_files([args.image])
    preflight.check_device(args.device)
    stem = Path(args.image).stem
    done = Path(args.out) / f"{stem}.json"  # written last: the record that a result is complete
    if done.exists() and not args.overwrite:
        raise InputError(f"{done} exists: --overwrite to redo it, or choose another --out")
    status(f"loading model {args.model} ...")
    backend = load_generative(str(args.model), device=args.device)
    backend.check_prompt(args.text)
    status(f"explaining the answer ({method.name}) ...")
    result = explain_answer(
        backend, args.image, args.text, answer=args.answer, method=method.name, **settings.as_dict()
    )
    paths = result.save(args.out, stem, figure=not args.no_figure)
    print(*paths.values(), sep="\n")
    return 0
