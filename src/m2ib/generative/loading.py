"""Loading a generative VLM and its processor by name: a ``save_pretrained`` directory or a hub id.

The directory's ``config.json`` names the model class (``architectures``); a registered family
must claim it (:attr:`GenerativeFamily.model_class`), else one line lists the supported ones.
A built-in name (``shapes-vqa``) is its directory in the package. A directory whose ``m2ib.json``
has ``vision_tower_from`` was saved without its vision tower's weights: they are that built-in
CLIP's (checked by their sha256) and are put back here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..backends import hub
from ..backends.hf_loading import quiet_transformers
from ..errors import InputError
from ..models import BUILTIN_MODELS
from .base import GENERATIVE_FAMILIES, GenerativeBackend, generative_backend


def model_directory(spec: str) -> Path:
    """The local directory of ``spec``: itself, or the cached (else downloaded) hub snapshot."""
    if spec in BUILTIN_MODELS:
        entry = BUILTIN_MODELS[spec]
        if not entry.generative:
            raise InputError(f"{spec}: a built-in CLIP, not a generative model (for --answer use shapes-vqa)")
        return entry.saved_directory()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError(f"{spec}: no such model directory (give a save_pretrained folder or a hub id)")
    return hub.hub_snapshot(spec)


def model_class(directory: Path) -> str:
    """The model class a supported family loads for ``directory``; one line otherwise."""
    config = directory / "config.json"
    if not config.is_file():
        raise InputError(f"{directory}: no config.json; give the folder a model was saved to with save_pretrained")
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise InputError(f"{config}: unreadable ({exc})") from None
    supported = [f.model_class for f in GENERATIVE_FAMILIES.values() if f.model_class]
    found = next((a for a in architectures if a in supported), None)
    if found is None:
        raise InputError(
            f"{directory}: {', '.join(architectures) or 'no architecture'} is not a supported generative model "
            f"(supported: {', '.join(supported)})"
        )
    return found


def is_generative(spec: object) -> bool:
    """Whether ``spec`` is a generative VLM: a :class:`GenerativeBackend`, a built-in generative
    model's name (``shapes-vqa``), or a folder whose
    ``config.json`` names a model class a registered family loads (what :func:`load_generative`
    reads); anything else (a built-in CLIP name, a CLIP folder, a hub id) is not, without an error."""
    if isinstance(spec, GenerativeBackend):
        return True
    if not isinstance(spec, (str, Path)):
        return False
    if isinstance(spec, str) and spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec].generative
    config = Path(spec).expanduser() / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    except (OSError, ValueError, AttributeError):  # unreadable, or not a JSON object: not a generative folder
        return False
    supported = {f.model_class for f in GENERATIVE_FAMILIES.values() if f.model_class}
    return any(a in supported for a in architectures)


def load_generative(spec: str, device: str | None = None) -> GenerativeBackend:
    """The backend of the generative VLM at ``spec`` (float32, eval mode, on ``device``)."""
    import transformers

    directory = model_directory(spec)
    name = model_class(directory)
    try:
        with quiet_transformers(), _errors_only(_vision_source(directory) is not None):
            model = getattr(transformers, name).from_pretrained(directory, dtype=torch.float32).eval()
            processor = transformers.AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError, ImportError) as exc:  # ImportError: SmolVLM's processor needs num2words
        raise InputError(f"{spec}: cannot load the model or its processor: {str(exc).splitlines()[0]}") from None
    shared_vision_tower(model, directory)
    if device is not None:
        model = model.to(device)
    return generative_backend(model, processor)


def _vision_source(directory: Path) -> dict | None:
    """``m2ib.json``'s ``vision_tower_from`` in ``directory``, or None."""
    settings = directory / "m2ib.json"
    try:
        source = json.loads(settings.read_text()).get("vision_tower_from") if settings.is_file() else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{settings}: unreadable ({exc})") from None
    return source or None


@contextlib.contextmanager
def _errors_only(on: bool) -> Iterator[None]:
    """transformers' log at errors only while ``on`` (its report of the vision weights left out,
    which are put back), its verbosity restored after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if on:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def shared_vision_tower(model: torch.nn.Module, directory: Path) -> None:
    """Put back the vision tower's weights of a model saved without them (``m2ib.json``'s
    ``vision_tower_from``: the built-in CLIP they are the image tower of, and its weights' sha256)."""
    import hashlib

    from safetensors.torch import load_file

    settings = directory / "m2ib.json"
    source = _vision_source(directory)
    if source is None:
        return
    if source.get("model") not in BUILTIN_MODELS:
        raise InputError(f"{settings}: vision_tower_from names {source.get('model')!r}, not a built-in model")
    weights = BUILTIN_MODELS[source["model"]].saved_directory() / "model.safetensors"
    if hashlib.sha256(weights.read_bytes()).hexdigest() != source.get("sha256"):
        raise InputError(
            f"{directory}: its vision tower is the {source['model']} model's as it was, but {weights} has changed "
            "since: retrain it (python -m m2ib.training.vqa)"
        )
    prefix = "vision_model."
    tower = {k[len(prefix) :]: v for k, v in load_file(weights).items() if k.startswith(prefix)}
    model.get_submodule("model.vision_tower").load_state_dict(tower)  # strict: every weight of the tower, no other


__all__ = ["is_generative", "load_generative", "model_class", "model_directory", "shared_vision_tower"]
