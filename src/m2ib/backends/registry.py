"""Model families as data: how each is recognised, loaded and wrapped in a backend.

Each family file ends with one ``register(Family(...))`` (:data:`FAMILIES`, an
:class:`m2ib.registry.Registry`); :func:`m2ib.backends.load_backend` only asks this table (by
object, by name prefix, by path, by transformers ``model_type``). A family's optional library is imported inside its functions, never when it registers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..registry import Description, Registry
from .base import Backend

# (model, name, tokenizer, processor, info) -> backend; info: a saved model's m2ib.json ("recommended" settings)
Wrap = Callable[[torch.nn.Module, str, Any, Any, dict], Backend]
# (spec, name=, processor=, tokenizer=) -> backend; spec: the name after the prefix (or a path), name: as given
Load = Callable[..., Backend]


def saved_info(path: Path) -> dict[str, Any]:
    """A saved model directory's ``m2ib.json`` (its ``"recommended"`` settings are the backend's),
    or {} when it has none; every family's directory loader reads it here."""
    import json

    from ..errors import InputError

    file = Path(path) / "m2ib.json"
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: not a readable JSON file ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("recommended", {}), dict):
        raise InputError(f'{file}: expected a JSON object whose "recommended" is {{method: {{setting: value}}}}')
    return info


def _never(_: Any) -> bool:
    return False


@dataclass(frozen=True)
class Family:
    """One model family: a library's models and the backend class that adapts them."""

    name: str  # e.g. "OpenCLIP"
    supports: str  # what load_backend's error lists as accepted objects, e.g. "open_clip CLIP/CustomTextCLIP"
    recognises: Callable[[torch.nn.Module], bool]  # whether a model object is this family's
    wrap: Wrap
    prefix: str | None = None  # names "PREFIX SPEC" are this family's ("open_clip:"); None: none of its own
    load: Load | None = None  # loads a prefixed name's SPEC
    recognises_path: Callable[[Path], bool] = _never  # whether an existing file/directory is in this family's format
    load_path: Load | None = None  # loads such a path (``spec`` is the Path)
    model_type: str | None = None  # transformers: the config.json ``model_type`` this family wraps
    model_class: str | None = None  # transformers: the class that loads it (``transformers.<model_class>``)
    install_hint: str = ""  # what to install when its optional library (or tokenizer) is missing ("": none needed)


def _check_family(family: Family, registry: Registry[Family]) -> None:
    """A name prefix belongs to one family, and comes with its load function."""
    if family.prefix is not None and any(f.prefix == family.prefix for f in registry.values()):
        raise ValueError(f"name prefix {family.prefix!r} already belongs to another family")
    if (family.prefix is None) != (family.load is None):
        raise ValueError(f"family {family.name!r}: a name prefix and its load function go together")


def _describe_family(family: Family) -> Description:
    how = [f"name prefix {family.prefix}"] if family.prefix else []
    how += [f"transformers model_type {family.model_type}"] if family.model_type else []
    title = family.supports + (f" ({'; '.join(how)})" if how else "")
    return Description("model family", family.name, title, "", (), family.recognises.__module__ or "")


#: Every family, in registration order (m2ib.backends imports the family files in a fixed order;
#: plugins' families come last). Lookups below take the first family that claims a model or name.
FAMILIES: Registry[Family] = Registry("model family", check=_check_family, describe=_describe_family)
#: Add a family (once per name); returns it.
register = FAMILIES.register


def families() -> tuple[Family, ...]:
    return tuple(FAMILIES.values())


def family_of_model(model: torch.nn.Module) -> Family | None:
    return next((f for f in FAMILIES.values() if f.recognises(model)), None)


def family_of_name(name: str) -> Family | None:
    """The family whose prefix starts ``name``."""
    return next((f for f in FAMILIES.values() if f.prefix is not None and name.startswith(f.prefix)), None)


def family_with_prefix(prefix: str) -> Family:
    return next(f for f in FAMILIES.values() if f.prefix == prefix)


def family_of_path(path: Path) -> Family | None:
    return next((f for f in FAMILIES.values() if f.load_path is not None and f.recognises_path(path)), None)


def family_of_model_type(model_type: str) -> Family | None:
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def model_types() -> list[str]:
    return [f.model_type for f in FAMILIES.values() if f.model_type is not None]


def supported_objects() -> str:
    """'A, B and C': the model objects the families accept."""
    names = [f.supports for f in FAMILIES.values()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def module_names(model: torch.nn.Module) -> set[str]:
    """The modules that define ``model``'s class and its bases (recognises optional libraries'
    models without importing them)."""
    return {c.__module__ or "" for c in type(model).__mro__}


__all__ = [
    "FAMILIES",
    "Family",
    "families",
    "family_of_model",
    "family_of_model_type",
    "family_of_name",
    "family_of_path",
    "family_with_prefix",
    "model_types",
    "module_names",
    "register",
    "supported_objects",
]
