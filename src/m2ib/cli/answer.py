"""``m2ib explain IMAGE PROMPT --answer TEXT --model DIR [--method NAME]``: a generative VLM's answer
explained by an answer method (:func:`m2ib.generative.explain_answer`; M2IB by default), writing
STEM.png, STEM.npz and STEM.json into --out.

The flags of the pairs pipeline that have no meaning for one answer are refused in one line, as
are setting flags the chosen answer method does not read. M2IB: ``--vision-beta`` is the answer's
beta (the bottleneck sits on the image tokens), ``--steps``, ``--lr``, ``--samples``,
``--init-alpha``, ``--var`` and ``--seed`` keep their meaning; ``--image-layer`` (exCLIP's flag, here
M2IB's bottleneck site), ``--per-word``/``--no-per-word`` and ``--prompt-side``/``--no-prompt-side``
(switches, :func:`add_answer_switches`) set M2IB's answer-only settings. The other answer methods read the
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
    "image_layer": "image_layer",
    "per_word": "per_word",
    "prompt_side": "prompt_side",
}

#: M2IB's boolean answer settings: each an on/off switch (``--per-word``/``--no-per-word``), as
#: train-shapes makes its boolean fields, not a ``true|false`` value.
ANSWER_SWITCHES = ("per_word", "prompt_side")


def add_answer_switches(parser: argparse.ArgumentParser) -> None:
    """``--NAME``/``--no-NAME`` for each of :data:`ANSWER_SWITCHES` (None when not given), with the setting's help."""
    from ..generative.m2ib import AnswerM2IBSettings
    from ..settings import fields_of

    group = parser.add_argument_group("answer settings (M2IB with --answer; default: the setting's)")
    fields = {f.name: f for f in fields_of(AnswerM2IBSettings)}
    for name in ANSWER_SWITCHES:
        field = fields[name]
        group.add_argument(
            field.flag,
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{field.help} (default: {'on' if field.default else 'off'}; --answer with --method m2ib only)",
        )


def describe_answer_site(parser: argparse.ArgumentParser) -> None:
    """Add M2IB's answer meaning to the help of ``--image-layer`` (a flag of exCLIP's setting too)."""
    from ..generative.m2ib import AnswerM2IBSettings
    from ..settings import fields_of

    field = next(f for f in fields_of(AnswerM2IBSettings) if f.name == "image_layer")
    for action in parser._actions:
        if action.dest == "image_layer":
            action.help = f"{action.help}; with --answer (m2ib): {field.help} (default: {field.default})"


def _switches(args: argparse.Namespace) -> dict[str, bool]:
    """The answer switches given (True/False), by setting name."""
    return {name: getattr(args, name) for name in ANSWER_SWITCHES if getattr(args, name, None) is not None}


def _flag(name: str, value: Any) -> str:
    """The flag a setting was given by (``--no-per-word`` for a switch turned off)."""
    return ("--no-" if value is False and name in ANSWER_SWITCHES else "--") + name.replace("_", "-")


def answer_flag_methods() -> dict[str, Any]:
    """The answer methods whose settings are flags of their own name (M2IB's are renamed, above), keyed
    ``answer-NAME`` so that they sit beside the CLIP methods in explain's parser."""
    from ..generative.methods import ANSWER_METHODS

    return {f"answer-{name}": cls for name, cls in ANSWER_METHODS.items() if name != "m2ib"}


def refuse_answer_flags(args: argparse.Namespace) -> None:
    """Without --answer, a setting flag that only answer methods have is refused in one line."""
    from ..methods import REGISTRY
    from ..settings import given_settings, owners

    clip = given_settings(args, {**REGISTRY, **interactions()})
    if "image_layer" in clip and not {m.strip() for m in args.method.split(",")} & set(
        owners({**REGISTRY, **interactions()}, "image_layer")
    ):
        raise InputError(
            "--image-layer is a setting of exclip, and of M2IB on an answer: give --method exclip, or --answer"
        )
    for name, value in {**given_settings(args, answer_flag_methods()), **_switches(args)}.items():
        if name not in clip:
            raise InputError(f"{_flag(name, value)} is a setting of the answer methods: it applies with --answer only")


def _flags(names: Any) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names) or "none"


def _answer_settings(args: argparse.Namespace, method: Any) -> dict[str, Any]:
    """The setting flags given, read by the answer method's own fields (M2IB's renamed); any other is refused."""
    from ..methods import REGISTRY
    from ..settings import fields_of, given_settings

    fields = {f.name: f for f in fields_of(method.Settings)}
    rename = ANSWER_SETTINGS if method.name == "m2ib" else {name: name for name in fields}
    out = {}
    given = {**given_settings(args, {**REGISTRY, **interactions(), **answer_flag_methods()}), **_switches(args)}
    for name, value in given.items():
        if name not in rename:
            raise InputError(
                f"{_flag(name, value)} does not apply to --answer with --method {method.name} "
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
    from ..pairs import refuse_over_inputs

    _check_flags(args)
    if args.method not in ANSWER_METHODS:
        raise InputError(
            f"--method {args.method}: --answer is explained by one answer method: {', '.join(ANSWER_METHODS)}"
        )
    method = answer_method(args.method)
    settings = method.make_settings(**_answer_settings(args, method))  # bad values: one line, before the model loads
    if args.answer is not None:  # else the model's own answer, generated after the load
        preflight.check_text(args.answer, "--answer")
    preflight.check_text(args.text, "the prompt")
    preflight.check_image_files([args.image])
    preflight.check_device(args.device)
    stem = Path(args.image).stem
    refuse_over_inputs(Path(args.out), [stem], [args.image])  # the figure would be IMAGE itself
    done = Path(args.out) / f"{stem}.json"  # written last: the record that a result is complete
    if done.exists() and not args.overwrite:
        raise InputError(f"{done} exists: --overwrite to redo it, or choose another --out")
    status(f"loading model {args.model} ...")
    backend = load_generative(str(args.model), device=args.device)
    backend.check_prompt(args.text)
    what = "answer" if args.answer is not None else "model's own answer"
    status(f"explaining the {what} ({method.name}) ...")
    result = explain_answer(
        backend, args.image, args.text, answer=args.answer, method=method.name, **settings.as_dict()
    )
    paths = result.save(args.out, stem, figure=not args.no_figure)
    print(*paths.values(), sep="\n")
    return 0
