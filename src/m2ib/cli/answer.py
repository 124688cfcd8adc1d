"""``m2ib explain IMAGE PROMPT --answer TEXT --model DIR``: M2IB on a generative VLM's answer
(:func:`m2ib.generative.explain_answer`), writing STEM.png, STEM.npz and STEM.json into --out.

The flags of the pairs pipeline that have no meaning for one answer are refused in one line, as
are M2IB setting flags other than the bottleneck's own: ``--vision-beta`` is the answer's beta
(the bottleneck sits on the image tokens), ``--steps``, ``--lr``, ``--samples``, ``--init-alpha``,
``--var`` and ``--seed`` keep their meaning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def _answer_settings(args: argparse.Namespace) -> dict[str, str]:
    """The setting flags given, renamed for :class:`AnswerM2IBSettings`; any other is refused."""
    from ..methods import REGISTRY
    from ..settings import given_settings

    out = {}
    for name, value in given_settings(args, {**REGISTRY, **interactions()}).items():  # every flag explain has
        if name not in ANSWER_SETTINGS:
            raise InputError(
                f"--{name.replace('_', '-')} does not apply to --answer (M2IB on the image tokens reads "
                f"{', '.join('--' + n.replace('_', '-') for n in ANSWER_SETTINGS)})"
            )
        out[ANSWER_SETTINGS[name]] = value
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
    if args.method != "m2ib":
        raise InputError(f"--method {args.method}: --answer is explained with m2ib only (for now)")
    if args.image is None or args.text is None:
        raise InputError("give an IMAGE and a PROMPT with --answer; see m2ib explain --help")


def run_answer(args: argparse.Namespace) -> int:
    from .. import preflight
    from ..generative import AnswerM2IBSettings, explain_answer
    from ..generative.loading import load_generative
    from ..settings import fields_of

    _check_flags(args)
    fields = {f.name: f for f in fields_of(AnswerM2IBSettings)}
    values = {name: fields[name].parse(value) for name, value in _answer_settings(args).items()}
    settings = AnswerM2IBSettings(**values)  # bad values: one line, before the model loads
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
    status("explaining the answer ...")
    result = explain_answer(backend, args.image, args.text, answer=args.answer, **settings.as_dict())
    paths = result.save(args.out, stem, figure=not args.no_figure)
    print(*paths.values(), sep="\n")
    return 0
