"""Settings files: method settings that replace a model's recommended values (``--settings FILE``,
``m2ib.load(model, settings=...)``).

A file is an ``m2ib.json`` in the shipped models' format (a top-level ``"recommended": {method:
{setting: value}}``; its other entries, such as ``"training"``, are not read), or a bare ``{method:
{setting: value}}`` mapping. For the methods it names, its values take the place of the model's
recommended ones, setting by setting; explicit settings still win (method defaults < the model's
recommended < the file < explicit settings). Everything is checked before a model loads: a missing
file, bad JSON, an unknown method or setting name is one :class:`~m2ib.errors.InputError` line
naming the file and the key; values are checked by the method's ``Settings`` as usual.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InputError

#: What a settings source may be: a path to a JSON file, or the mapping such a file holds.
SettingsSource = str | os.PathLike | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class SettingsFile:
    """A checked settings file: ``values[method][setting]``, and ``source``, where they came from
    (the file's absolute path, or ``"mapping"`` for a mapping given in code)."""

    values: dict[str, dict[str, Any]]
    source: str


def read_settings(source: SettingsSource, registry: Mapping[str, Any]) -> SettingsFile:
    """Read and check ``source`` against ``registry`` (method name -> method class with ``Settings``
    and ``make_settings``); the values come back as JSON holds them."""
    if isinstance(source, Mapping):
        where, data = "settings", source
        label = "mapping"
    else:
        path = Path(source).expanduser()
        where, label = str(source), str(path.resolve())
        data = _read_json(path, where)
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a JSON object of methods' settings, got {type(data).__name__}")
    key = "recommended" if "recommended" in data else ""
    section = data[key] if key else data
    if not isinstance(section, Mapping):
        raise InputError(f"{where}: {key} must be an object {{method: {{setting: value}}}}")
    values: dict[str, dict[str, Any]] = {}
    for method, settings in section.items():
        name = f"{key}.{method}" if key else str(method)
        if method not in registry:
            raise InputError(f"{where}: {name}: unknown method; known: {', '.join(registry)}")
        if not isinstance(settings, Mapping):
            raise InputError(f"{where}: {name}: expected an object {{setting: value}}")
        cls = registry[method]
        names = [f.name for f in dataclasses.fields(cls.Settings)]
        for setting in settings:
            if setting not in names:
                raise InputError(f"{where}: {name}.{setting}: unknown setting of {method}; valid: {', '.join(names)}")
        try:
            cls().make_settings(None, **settings)  # bad values: the method's own one-line message
        except InputError as exc:
            raise InputError(f"{where}: {name}: {exc}") from None
        values[str(method)] = dict(settings)
    return SettingsFile(values, label)


def _read_json(path: Path, where: str) -> Any:
    if path.is_dir():
        raise InputError(f"{where}: is a folder; give a settings file (JSON, e.g. a model's m2ib.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{where}: settings file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read the settings file ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def overlay(recommended: Mapping[str, Mapping[str, Any]], given: Mapping[str, Mapping[str, Any]]) -> dict:
    """``recommended`` with ``given``'s values in place of its own, setting by setting (new dicts)."""
    out = {method: dict(values) for method, values in recommended.items()}
    for method, values in given.items():
        out.setdefault(method, {}).update(values)
    return out


__all__ = ["SettingsFile", "SettingsSource", "overlay", "read_settings"]
