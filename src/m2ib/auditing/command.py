"""``m2ib audit`` behind its parser (:mod:`m2ib.cli`): the checks that need no model, then the audit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..evaluation.command import EXIT_UNFINISHED, evaluation_settings, reproducing


def run_audit(args: argparse.Namespace) -> int:
    """``m2ib audit``: check everything cheap, then explain every pair and aggregate (:func:`m2ib.auditing.audit`)."""
    import shlex

    from .. import preflight
    from . import audit
    from .run import locked

    seed, per_method = evaluation_settings([args.method], args)  # checked before the model loads
    preflight.check_device(args.device)
    for value, flag in ((args.batch_size, "--batch-size"), (args.rows, "--rows")):
        preflight.check_positive(value, flag)
    data = args.data.strip()
    if not data.startswith("shapes:") and not Path(data).is_file():
        raise InputError(f"--data {data}: no such file (give a TSV/CSV of pairs or shapes:SPLIT:N)")
    preflight.prepare_output_dir(args.out)
    with locked(args.out):  # a run already writing there is refused now, not after the load
        pass
    result = audit(args.model, data, args.out, method=args.method, rows=args.rows, seed=seed,
                   batch_size=args.batch_size, device=args.device, report=not args.no_report,
                   time_limit=args.time_limit, command="m2ib " + shlex.join(reproducing(args.argv)),
                   **per_method.get(args.method, {}))
    if result.bad:
        print(f"m2ib: {len(result.bad)} row(s) could not be used (listed in the report)", file=sys.stderr)
    print(result.files.get("report", result.files.get("pairs")))
    return 0 if result.finished else EXIT_UNFINISHED
