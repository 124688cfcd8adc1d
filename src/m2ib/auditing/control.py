"""The audit's control: the same pairs explained under a model that cannot hold the finding, so
that what is flagged as much there is called a *method artefact*, not a finding about the model.

The default control (``"randomised"``) is a copy of the audited model whose towers are randomised
above the method's layers (:func:`m2ib.metrics.sanity.randomised_above`: the head and every block
above ``vision_layer`` / ``text_layer``; every block for a method without layers): the
representation the method reads is the model's, everything the model computes from it is random,
so a word or region the method still singles out comes from the method and the representation's
layout (token position, norms), not from what the model learnt to match. A user-named control
(``--control MODEL``: e.g. the same model trained without a suspected cue) is loaded as ``--model``
is. ``"none"`` measures no control.

The rule (:func:`judge`), per flag reason: a word's reason ('everywhere', 'top too often') is a
method artefact when the control's own word table flags that word for that reason too (its
statistic under the control reaches the same threshold); a region is a method artefact when the
control's mean map holds at least ``REGION_FACTOR`` times the even share on the region's patches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .image import REGION_FACTOR, Region, mass_in
from .words import WordRow

if TYPE_CHECKING:
    import torch

    from ..backends.base import Backend

RANDOMISED = "randomised"
NONE = "none"
#: The control an audit measures unless told otherwise.
DEFAULT_CONTROL = RANDOMISED
#: The flag a finding also found under the control gets instead of a model flag.
ARTEFACT = "method artefact"
_PREFIXES = ("hf:", "open_clip:", "clip:")


def control_spec(control: Any) -> str:
    """What the run records as its control: ``"randomised"``, ``"none"`` or the model as named."""
    if control is None:
        return NONE
    if isinstance(control, (str, os.PathLike)):
        return str(control).strip() or NONE
    return str(getattr(control, "name", type(control).__name__))


def check_control(control: Any) -> str:
    """The control's spec, checked without loading anything: one line when it names no model
    (a built-in name, an existing directory, a hub id ``ORG/NAME`` or a prefixed spec)."""
    from ..models import BUILTIN_MODELS, builtin_names, generative_refusal

    spec = control_spec(control)
    if spec in BUILTIN_MODELS and BUILTIN_MODELS[spec].generative:
        raise InputError(f"--control {generative_refusal(spec)}")
    if not isinstance(control, (str, os.PathLike)) or spec in (RANDOMISED, NONE) or spec in BUILTIN_MODELS:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"--control {spec}: not a model directory (give {RANDOMISED}, {NONE} or a model)")
        return spec
    # what cannot be checked here: a hub id ORG/NAME or a prefixed spec (the loader says what is wrong)
    hub_id = spec.startswith(_PREFIXES) or (spec.count("/") == 1 and not spec.startswith((".", "/", "~")))
    if not hub_id:
        raise InputError(
            f"--control {spec}: no such model or directory (give {RANDOMISED}, {NONE}, "
            f"a built-in name ({', '.join(builtin_names())}), a model directory or a hub id)"
        )
    return spec


def check_same_control(out: str | os.PathLike, spec: str) -> None:
    """Refuse, in one line and before any model loads, to resume ``out`` with another control."""
    from ..evaluation.store import RESULTS

    path = Path(out) / RESULTS
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return  # no run there yet (or a torn first line: the store deals with it)
    protocol = first.get("metrics") if isinstance(first, dict) else None
    if not isinstance(protocol, dict) or "audit" not in protocol:
        return  # not an audit: the store refuses it with its own message
    old = protocol.get("control", "(none recorded: an audit from before controls)")
    if old != spec:
        raise InputError(
            f"{path} holds an audit with --control {old}, not {spec}: re-run with --control {old} "
            "to resume, or use another --out"
        )


def method_layers(backend: Backend, method: str, settings: dict[str, Any], seed: int) -> dict[str, int | None]:
    """The block each tower's map is read at under ``method`` (None: the method has no layer)."""
    from ..evaluation.provenance import resolved_settings

    resolved = resolved_settings(backend, [method], {method: settings}, seed)[method]
    return {"image": resolved.get("vision_layer"), "text": resolved.get("text_layer")}


def load_control(
    control: Any, backend: Backend, method: str, settings: dict[str, Any], seed: int, device: str | None = None
) -> Backend | None:
    """The control model of ``control`` (see :func:`check_control`); None for ``"none"``.

    A named control must have the audited model's input geometry (image size and patch grid), so
    that its maps fall on the same patches."""
    from ..api import load
    from ..metrics.sanity import randomised_above

    spec = check_control(control)
    if spec == NONE:
        return None
    if isinstance(control, str) and spec == RANDOMISED:
        layers = method_layers(backend, method, settings, seed)
        return randomised_above(backend, {"image": layers["image"], "text": layers["text"]}, seed=0)
    loaded = load(control, device=device)
    ours, theirs = backend.geometry, loaded.geometry
    if (ours.image_size, ours.patch_grid) != (theirs.image_size, theirs.patch_grid):
        raise InputError(
            f"--control {spec}: its input is {theirs.image_size} pixels in a {theirs.patch_grid} patch grid, "
            f"the audited model's {ours.image_size} in {ours.patch_grid}: a control must see the same patches"
        )
    return loaded


def judge(
    words: list[WordRow],
    regions: Sequence[Region],
    control_words: Sequence[WordRow],
    control_prior: torch.Tensor | None,
) -> None:
    """Mark, in the audited model's ``words`` (re-sorted) and ``regions``, what the control (its word
    table and mean map) flags as much: the rule of this module's docstring."""
    theirs = {w.word: w for w in control_words}
    for row in words:
        other = theirs.get(row.word)
        if other is None:
            continue  # the control's tokenizer left the word out: nothing measured, nothing called an artefact
        row.control_mean_share, row.control_top_share, row.control_flag = (
            other.mean_share,
            other.top_share,
            other.flag,
        )
        reasons, shared = _reasons(row.flag), set(_reasons(other.flag))
        row.artefact = "; ".join(r for r in reasons if r in shared)
        row.flag = "; ".join(r for r in reasons if r not in shared)
    words.sort(key=lambda r: (r.flag == "", r.artefact == "", -r.mean_share * r.count, r.word))
    if control_prior is None:
        return
    for region in regions:
        region.control_mass = float(mass_in(control_prior, region.mask))
        even = float(region.mask.sum()) / region.mask.numel()
        region.artefact = region.control_mass >= REGION_FACTOR * even


def _reasons(flag: str) -> list[str]:
    return [r for r in flag.split("; ") if r]
