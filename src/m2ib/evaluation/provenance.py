"""The provenance record that opens every results file, and the check that a run resumes the same run."""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backends.base import Backend
from ..datasets.tables import PairTable
from ..errors import InputError

FORMAT = 1
#: Provenance fields that must match for a run to resume another (methods, settings and metrics: see check_same_run).
SAME_RUN = ("format", "model", "weights_sha256", "seed", "data", "rows", "methods", "settings", "metrics")


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolved_settings(
    backend: Backend, methods: Sequence[str], settings: dict[str, dict[str, Any]] | None, seed: int
) -> dict[str, dict[str, Any]]:
    """Every setting each method runs with (defaults, the model's recommended, overrides, layers resolved;
    interaction methods too)."""
    from .phrases import resolved_settings as resolved

    out = {m: resolved(backend, m, {"seed": int(seed), **((settings or {}).get(m) or {})}) for m in methods}
    return json.loads(json.dumps(out, default=str))


def provenance(
    backend: Backend,
    table: PairTable,
    methods: Sequence[str],
    protocol: dict[str, Any],
    settings: dict[str, dict[str, Any]] | None,
    seed: int,
    command: str | None = None,
) -> dict[str, Any]:
    """The provenance record written first in every results file; ``protocol`` is its ``"metrics"``
    (:func:`m2ib.metrics.base.metrics_record`: the metrics and their options)."""
    import transformers

    from ..version import __version__

    record = {
        "kind": "provenance",
        "format": FORMAT,
        "versions": {
            "m2ib": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "model": backend.name,
        "model_class": type(backend.model).__name__,
        "weights_sha256": weights_hash(backend.model),
        "device": str(backend.device),
        "seed": int(seed),
        "data": table.spec,
        "data_kind": table.kind,
        "rows_in_source": table.total,
        "rows": len(table.rows),
        "methods": list(methods),
        "settings": resolved_settings(backend, methods, settings, seed),
        "settings_source": backend.settings_source,  # a settings file that replaced the model's recommended values
        "metrics": protocol,
        "command": command if command is not None else " ".join(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return json.loads(json.dumps(record, default=str))  # as it reads back from the file


def check_same_run(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """Raise unless ``new`` resumes ``old``: the same run, or the same run restricted to some of
    its methods (``--methods`` naming a subset, with those methods' settings unchanged), so that
    cheap methods can be finished first and expensive ones later."""
    diffs = [k for k in SAME_RUN if k not in ("methods", "settings", "metrics") and old.get(k) != new.get(k)]
    if not same_metrics(old.get("metrics") or {}, new["metrics"]):
        diffs.append("metrics")
    old_methods, new_methods = old.get("methods") or [], new.get("methods") or []
    extra = [m for m in new_methods if m not in old_methods]
    if extra:
        diffs.append(f"methods ({', '.join(extra)} not in {', '.join(old_methods)})")
    elif any((old.get("settings") or {}).get(m) != (new.get("settings") or {}).get(m) for m in new_methods):
        diffs.append("settings")
    if diffs:
        raise InputError(
            f"{path} holds a run with other {', '.join(diffs)}: re-run the same command to resume "
            "(--methods may name some of its methods only), or use another --out"
        )


def same_metrics(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a run that recorded the metric protocol ``old`` measures what ``new`` asks: the same
    metrics, in the same order, with the same options. Runs written before metric options were per
    metric recorded every metric's options, chosen or not; those of metrics not chosen do not count."""
    return old.get("names") == new.get("names") and all(old.get(key) == value for key, value in new.items())
