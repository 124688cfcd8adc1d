"""Settings that describe themselves.

A method's setting is one field of its frozen settings dataclass (``m2ib.methods.base.setting``):
a type (``bool``, ``int``, ``float``, ``str`` or ``Literal[...]``, optionally ``| None``), a
default, and a help text (the field's ``help`` metadata, else its ``doc``). This module is the
one place that reads those fields; from them come

* :class:`SettingField`: the description every front end uses (the viewer builds its controls
  from :attr:`SettingField.control`);
* :meth:`SettingField.parse`: a value typed by a person (``--cuda-graphs false``, a page's
  text box) made into the setting's type, strictly ("banana" is not a bool);
* :meth:`SettingField.check`: the type check every settings object runs when it is made;
* :func:`add_setting_flags` / :func:`settings_per_method`: the command line's flags;
* the range checks that settings' ``validate`` methods share (``check_*``).

Nothing here imports the method registry: functions that need it take it as an argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeGuard

from .errors import InputError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
KINDS = (bool, int, float, str)
INT_LIMIT = 2**63  # whole-number settings are torch int64s
#: Seeds every random generator m2ib seeds accepts (torch's manual_seed, numpy's default_rng).
SEED_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class SettingField:
    """One setting of one settings dataclass."""

    name: str
    kind: type  # bool, int, float or str
    default: Any
    help: str
    optional: bool = False  # None allowed: the model's recommended value, or the help text's rule
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def control(self) -> str:
        """How a form shows it: ``choice``, ``checkbox``, ``auto`` (empty text means None),
        ``integer``, ``number`` or ``text``."""
        if self.choices:
            return "choice"
        if self.kind is bool:
            return "checkbox"
        if self.default is None:
            return "auto"
        return {int: "integer", float: "number"}.get(self.kind, "text")

    def parse(self, value: Any) -> Any:
        """A value typed on a command line or sent by a page control, as the setting's type.

        Text is read strictly (``true``/``false``, whole numbers, finite numbers, one of the
        choices); a whole float becomes an int for an integer setting. ``None`` stays None.
        """
        if value is None:
            return None
        if isinstance(value, str):
            value = self._from_text(value.strip())
        elif self.kind is int and isinstance(value, float) and not isinstance(value, bool):
            if not value.is_integer():
                raise InputError(f"{self.name}={value:g} must be a whole number")
            value = int(value)
        self.check(value)
        return value

    def _from_text(self, text: str) -> Any:
        if self.kind is bool:
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise InputError(f"{self.name}={text!r} must be true or false")
        if self.kind is int:
            try:
                return int(text)
            except ValueError:
                raise InputError(f"{self.name}={text!r} must be a whole number") from None
        if self.kind is float:
            try:
                return float(text)
            except ValueError:
                raise InputError(f"{self.name}={text!r} must be a number") from None
        return text

    def check(self, value: Any) -> None:
        """Raise unless ``value`` has the setting's type (numbers finite, one of the choices)."""
        if value is None:
            if not self.optional:
                raise InputError(f"{self.name}=None: give a value (default: {self.format(self.default)})")
            return
        if self.kind is bool and not isinstance(value, bool):
            raise InputError(f"{self.name}={value!r} must be true or false")
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{self.name}={value!r} must be an integer")
        if self.name == "seed":  # every method's seed (methods.base.Settings): the generators' range
            check_seed(value)
        if self.kind is int and not -INT_LIMIT < value < INT_LIMIT:  # torch's int64 (a traceback otherwise)
            raise InputError(f"{self.name}={value} is out of range: a whole-number setting lies strictly between "
                             f"-2**63 and 2**63")
        if self.kind is float and not _finite_number(value):
            raise InputError(f"{self.name}={value!r} must be a finite number")
        if self.kind is str and not isinstance(value, str):
            raise InputError(f"{self.name}={value!r} must be text")
        if self.choices:
            check_choice(value, self.name, self.choices)

    def format(self, value: Any) -> str:
        """``value`` as :meth:`parse` reads it back (``true``, ``0.1``, ...; ``""`` for None)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def fields_of(settings_class: type) -> list[SettingField]:
    """The settings of a frozen settings dataclass, in declaration order."""
    hints = typing.get_type_hints(settings_class)
    out = []
    for f in dataclasses.fields(settings_class):
        kind, optional, choices = _kind_of(hints[f.name], f"{settings_class.__name__}.{f.name}")
        choices = tuple(f.metadata["choices"]) if f.metadata.get("choices") else choices
        text = f.metadata.get("help") or getattr(f, "doc", None) or ""
        out.append(SettingField(f.name, kind, f.default, text, optional, choices))
    return out


def _kind_of(annotation: Any, where: str) -> tuple[type, bool, tuple | None]:
    """(kind, optional, choices) of a field's annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: a setting has one type (or that type | None), not {annotation}")
        annotation = rest[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or next(iter(kinds)) not in KINDS:
            raise TypeError(f"{where}: a Literal setting needs choices of one type (bool, int, float or str)")
        return kinds.pop(), optional, choices
    if annotation not in KINDS:
        raise TypeError(f"{where}: a setting is a bool, int, float, str or Literal, not {annotation}")
    return annotation, optional, None


def check_types(settings: Any) -> None:
    """Raise unless every field of the settings object has its declared type."""
    for field in fields_of(type(settings)):
        field.check(getattr(settings, field.name))


# ----------------------------------------------------------------------------------------------
# Range checks shared by the settings' ``validate`` methods (errors name the setting).
# ----------------------------------------------------------------------------------------------
def _finite_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name}={value!r} must be {rule}")


def check_number(value: object, name: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    """A finite number >= ``minimum`` (> with ``strict``; ``strict`` at 0 reads "positive")."""
    ok = _finite_number(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        rule = "a positive number" if strict and minimum == 0 else \
            f"a number {'>' if strict else '>='} {minimum:g}"
        raise InputError(f"{name}={value!r} must be {rule}")


def check_seed(value: object, name: str = "seed") -> None:
    """A seed the random generators accept: a whole number from 0 to :data:`SEED_MAX`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise InputError(f"{name}={value!r} is outside the random generator's range: use a whole number from 0 "
                         f"to {SEED_MAX} (2**63 - 1)")


def check_layer(value: object, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{name}={value!r} must be an integer block index")


def check_choice(value: object, name: str, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r}: use one of {', '.join(str(c) for c in choices)}")


# ----------------------------------------------------------------------------------------------
# Every registered method's settings (``registry``: method name -> Method class).
# ----------------------------------------------------------------------------------------------
def fields_by_method(registry: Mapping[str, Any]) -> dict[str, dict[str, SettingField]]:
    """method -> setting name -> field."""
    return {method: {f.name: f for f in fields_of(cls.Settings)} for method, cls in registry.items()}


def owners(registry: Mapping[str, Any], name: str) -> list[str]:
    """The registered methods that have the setting ``name``."""
    return [m for m, fields in fields_by_method(registry).items() if name in fields]


def add_setting_flags(parser: argparse.ArgumentParser, registry: Mapping[str, Any]) -> None:
    """One flag per setting name (``--vision-layer``, also ``--vision_layer``); its value is
    kept as text and read by :func:`settings_per_method`, per method that has the setting."""
    group = parser.add_argument_group("method settings (defaults: the method's published ones; a setting "
                                      "applies to the methods listed with it)")
    by_name: dict[str, dict[str, SettingField]] = {}
    for method, fields in fields_by_method(registry).items():
        for name, field in fields.items():
            by_name.setdefault(name, {})[method] = field
    for name, owned in by_name.items():
        field = next(iter(owned.values()))
        choices = {f.choices for f in owned.values()}
        metavar = "{" + ",".join(map(str, field.choices)) + "}" if len(choices) == 1 and field.choices else \
            {bool: "true|false", int: "N", float: "X"}.get(field.kind, "VALUE")
        flags = [field.flag] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, default=None, metavar=metavar, help=_flag_help(owned))


def _flag_help(owned: Mapping[str, SettingField]) -> str:
    described: dict[tuple[str, str], list[str]] = {}  # (help, default) -> methods
    for method, field in owned.items():
        # a None default is described by the help text itself (a rule, or the model's recommendation)
        default = "" if field.default is None else f"default: {field.format(field.default)}"
        described.setdefault((field.help, default), []).append(method)
    if len(described) == 1:
        (text, default), = described
        return f"{text} ({default + '; ' if default else ''}methods: {', '.join(owned)})"
    return "; ".join(f"{', '.join(ms)}: {text}" + (f" ({default})" if default else "")
                     for (text, default), ms in described.items())


def given_settings(args: argparse.Namespace, registry: Mapping[str, Any]) -> dict[str, str]:
    """The setting flags given on a command line (as text), by setting name."""
    names = {name for fields in fields_by_method(registry).values() for name in fields}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def settings_per_method(methods: Sequence[str], given: Mapping[str, Any],
                        registry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each chosen method's share of the settings ``given``, read with that method's own field.

    One method: it gets every setting, and names the ones it does not have. Several: each
    gets those it has, and a setting none of them has is an error."""
    fields = fields_by_method(registry)
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for name, value in given.items():
        chosen = [m for m in methods if name in fields[m]]
        if not chosen and len(methods) == 1:  # the method reports it with its valid settings
            per[methods[0]][name] = fields[owners(registry, name)[0]][name].parse(value)
        elif not chosen:
            raise InputError(f"setting {name} applies to none of {', '.join(methods)} (it is a setting of "
                             f"{', '.join(owners(registry, name))})")
        for method in chosen:
            per[method][name] = fields[method][name].parse(value)
    return per


def parse_assignment(item: str, methods: Sequence[str], registry: Mapping[str, Any]) -> tuple[str, str, Any]:
    """``METHOD.NAME=VALUE`` -> (method, setting, value of the setting's type)."""
    target, eq, text = item.partition("=")
    method, dot, name = target.strip().partition(".")
    if not eq or not dot or method not in methods:
        raise InputError(f"--setting {item!r}: use METHOD.NAME=VALUE with METHOD one of {', '.join(methods)}")
    fields = fields_by_method({method: registry[method]})[method]
    if name not in fields:
        raise InputError(f"--setting {item!r}: {method} has no setting {name!r} (it has {', '.join(fields)})")
    return method, name, fields[name].parse(text)
