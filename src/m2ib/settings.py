"""Settings that describe themselves.

A method's setting, or a metric's option, is one field of a frozen settings dataclass (a
subclass of :class:`SettingsBase`, each field made with :func:`setting`): a type (``bool``,
``int``, ``float``, ``str`` or ``Literal[...]``, or ``tuple[that, ...]`` for a comma list;
optionally ``| None``), a default, and a help text (the field's ``help`` metadata, else its
``doc``). This module is the one place that reads those fields; from them come

* :class:`SettingField`: the description every front end uses (the viewer builds its controls
  from :attr:`SettingField.control`);
* :meth:`SettingField.parse`: a value typed by a person (``--cuda-graphs false``, a page's
  text box) made into the setting's type, strictly ("banana" is not a bool);
* :meth:`SettingField.check`: the type check every settings object runs when it is made;
* :func:`add_setting_flags` / :func:`settings_per_method`: the command line's flags;
* :func:`add_owned_flags` / :func:`given_owned`: flags named after their owner (a metric's
  options: ``--deletion-steps``, see :func:`owned_name`);
* the range checks that settings' ``validate`` methods share (``check_*``).

Nothing here imports a registry (methods, metrics): functions that need one take it as an argument.
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


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A settings field with its help text; ``choices=(...)`` restricts a text setting, and
    ``alias="name"`` keeps an older name of an owned setting (see :func:`owned_name`).

    The field is all a new setting takes: its flag, its viewer control and the check of its
    type come from it."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass(frozen=True)
class SettingsBase:
    """Base of every settings dataclass (a method's, a metric's): made, it checks each field's
    type, then its own ranges (:meth:`validate`)."""

    def __post_init__(self) -> None:
        check_types(self)  # every field's declared type first, so validate() may rely on it
        self.validate()

    def validate(self) -> None:
        """Hook: check ranges with the shared ``check_*`` below; errors name the setting."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SettingField:
    """One setting of one settings dataclass."""

    name: str
    kind: type  # bool, int, float or str (of each item, for a list)
    default: Any
    help: str
    optional: bool = False  # None allowed: the model's recommended value, or the help text's rule
    choices: tuple | None = None  # of the value (of each item, for a list)
    many: bool = False  # a tuple of ``kind`` values, typed as a comma list ("10,20,30")
    alias: str | None = None  # an older name kept for an owned setting (see owned_name)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def control(self) -> str:
        """How a form shows it: ``choice``, ``checkbox``, ``auto`` (empty text means None),
        ``integer``, ``number``, ``list`` (a comma list in a text box) or ``text``."""
        if self.many:
            return "list"
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
        choices); a whole float becomes an int for an integer setting. ``None`` stays None. A
        list setting reads a comma list ("10,20,30": no empty item; "" is the empty list) or a
        sequence, item by item.
        """
        if value is None:
            return None
        if self.many:
            value = self._items(value)
        elif isinstance(value, str):
            value = self._from_text(value.strip())
        else:
            value = self._whole(value)
        self.check(value)
        return value

    def _items(self, value: Any) -> tuple:
        if isinstance(value, str):
            text = value.strip()
            items: list[Any] = [t.strip() for t in text.split(",")] if text else []
            if any(not t for t in items):
                raise InputError(
                    f"{self.name}={value!r} has an empty item: give a comma list such as "
                    f"{self.format(self.default) or 'a,b'}"
                )
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise InputError(f"{self.name}={value!r} must be a comma list")
        item = dataclasses.replace(self, many=False, optional=False)
        return tuple(item._from_text(v.strip()) if isinstance(v, str) else item._whole(v) for v in items)

    def _whole(self, value: Any) -> Any:
        """A whole float as an int for an integer setting (page number boxes send floats)."""
        if self.kind is int and isinstance(value, float) and not isinstance(value, bool):
            if not value.is_integer():
                raise InputError(f"{self.name}={value:g} must be a whole number")
            return int(value)
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
        """Raise unless ``value`` has the setting's type (numbers finite, one of the choices; a
        list setting: a tuple of such values)."""
        if value is None:
            if not self.optional:
                raise InputError(f"{self.name}=None: give a value (default: {self.format(self.default)})")
            return
        if self.many:
            if not isinstance(value, tuple):
                raise InputError(f"{self.name}={value!r} must be a tuple (on a command line: a comma list)")
            item = dataclasses.replace(self, many=False, optional=False)
            for v in value:
                item.check(v)
            return
        if self.kind is bool and not isinstance(value, bool):
            raise InputError(f"{self.name}={value!r} must be true or false")
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{self.name}={value!r} must be an integer")
        if self.name == "seed":  # every method's seed (methods.base.Settings): the generators' range
            check_seed(value)
        if self.kind is int and not -INT_LIMIT < value < INT_LIMIT:  # torch's int64 (a traceback otherwise)
            raise InputError(
                f"{self.name}={value} is out of range: a whole-number setting lies strictly between -2**63 and 2**63"
            )
        if self.kind is float and not _finite_number(value):
            raise InputError(f"{self.name}={value!r} must be a finite number")
        if self.kind is str and not isinstance(value, str):
            raise InputError(f"{self.name}={value!r} must be text")
        if self.choices:
            check_choice(value, self.name, self.choices)

    def format(self, value: Any) -> str:
        """``value`` as :meth:`parse` reads it back (``true``, ``0.1``, ``10,20``, ...; ``""`` for None)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.many:
            return ",".join(dataclasses.replace(self, many=False).format(v) for v in value)
        return str(value)

    @property
    def metavar(self) -> str:
        """What a flag's usage shows for its value (``{a,b}``, ``N``, ``X``, ``true|false``; a list: ``N[,N...]``)."""
        one = (
            "{" + ",".join(map(str, self.choices)) + "}"
            if self.choices
            else {bool: "true|false", int: "N", float: "X"}.get(self.kind, "VALUE")
        )
        return f"{one}[,...]" if self.many else one


def fields_of(settings_class: type) -> list[SettingField]:
    """The settings of a frozen settings dataclass, in declaration order."""
    hints = typing.get_type_hints(settings_class)
    out = []
    for f in dataclasses.fields(settings_class):
        kind, optional, choices, many = _kind_of(hints[f.name], f"{settings_class.__name__}.{f.name}")
        choices = tuple(f.metadata["choices"]) if f.metadata.get("choices") else choices
        text = f.metadata.get("help") or getattr(f, "doc", None) or ""
        out.append(SettingField(f.name, kind, f.default, text, optional, choices, many, f.metadata.get("alias")))
    return out


def _kind_of(annotation: Any, where: str) -> tuple[type, bool, tuple | None, bool]:
    """(kind, optional, choices, many) of a field's annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: a setting has one type (or that type | None), not {annotation}")
        annotation = rest[0]
    many = typing.get_origin(annotation) is tuple
    if many:
        items = typing.get_args(annotation)
        if len(items) != 2 or items[1] is not Ellipsis:
            raise TypeError(f"{where}: a list setting is tuple[kind, ...], not {annotation}")
        annotation = items[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or next(iter(kinds)) not in KINDS:
            raise TypeError(f"{where}: a Literal setting needs choices of one type (bool, int, float or str)")
        return kinds.pop(), optional, choices, many
    if annotation not in KINDS:
        raise TypeError(
            f"{where}: a setting is a bool, int, float, str, Literal or a tuple[..., ...] of one, not {annotation}"
        )
    return annotation, optional, None, many


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
        rule = "a positive number" if strict and minimum == 0 else f"a number {'>' if strict else '>='} {minimum:g}"
        raise InputError(f"{name}={value!r} must be {rule}")


def check_seed(value: object, name: str = "seed") -> None:
    """A seed the random generators accept: a whole number from 0 to :data:`SEED_MAX`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise InputError(
            f"{name}={value!r} is outside the random generator's range: use a whole number from 0 "
            f"to {SEED_MAX} (2**63 - 1)"
        )


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
    group = parser.add_argument_group(
        "method settings (defaults: the method's published ones; a setting applies to the methods listed with it)"
    )
    by_name: dict[str, dict[str, SettingField]] = {}
    for method, fields in fields_by_method(registry).items():
        for name, field in fields.items():
            by_name.setdefault(name, {})[method] = field
    for name, owned in by_name.items():
        field = next(iter(owned.values()))
        choices = {f.choices for f in owned.values()}
        metavar = field.metavar if len(choices) == 1 else dataclasses.replace(field, choices=None).metavar
        flags = [field.flag] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, default=None, metavar=metavar, help=_flag_help(owned))


def _flag_help(owned: Mapping[str, SettingField]) -> str:
    described: dict[tuple[str, str], list[str]] = {}  # (help, default) -> methods
    for method, field in owned.items():
        # a None default is described by the help text itself (a rule, or the model's recommendation)
        default = "" if field.default is None else f"default: {field.format(field.default)}"
        described.setdefault((field.help, default), []).append(method)
    if len(described) == 1:
        ((text, default),) = described
        return f"{text} ({default + '; ' if default else ''}methods: {', '.join(owned)})"
    return "; ".join(
        f"{', '.join(ms)}: {text}" + (f" ({default})" if default else "") for (text, default), ms in described.items()
    )


def given_settings(args: argparse.Namespace, registry: Mapping[str, Any]) -> dict[str, str]:
    """The setting flags given on a command line (as text), by setting name."""
    names = {name for fields in fields_by_method(registry).values() for name in fields}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def settings_per_method(
    methods: Sequence[str], given: Mapping[str, Any], registry: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
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
            raise InputError(
                f"setting {name} applies to none of {', '.join(methods)} (it is a setting of "
                f"{', '.join(owners(registry, name))})"
            )
        for method in chosen:
            per[method][name] = fields[method][name].parse(value)
    return per


def parse_assignment(
    item: str, methods: Sequence[str], registry: Mapping[str, Any], *, option: str = "--setting", owner: str = "METHOD"
) -> tuple[str, str, Any]:
    """``METHOD.NAME=VALUE`` (given after ``option``; ``owner`` says what METHOD is) -> (method,
    setting, value of the setting's type)."""
    target, eq, text = item.partition("=")
    method, dot, name = target.strip().partition(".")
    if not eq or not dot or method not in methods:
        raise InputError(f"{option} {item!r}: use {owner}.NAME=VALUE with {owner} one of {', '.join(methods)}")
    fields = fields_by_method({method: registry[method]})[method]
    if name not in fields:
        raise InputError(f"{option} {item!r}: {method} has no setting {name!r} (it has {', '.join(fields) or 'none'})")
    return method, name, fields[name].parse(text)


# ----------------------------------------------------------------------------------------------
# Settings named after their owner (a metric's options): one flag per owner and setting.
# ----------------------------------------------------------------------------------------------
OWNED = "owned:"  # prefix of the owned flags' argparse destinations (apart from the method settings')


def owned_name(owner: str, field: SettingField) -> str:
    """An owned setting's name among every owner's: ``{owner}_{name}`` with dashes as underscores
    (metric ``deletion``'s ``steps``: ``deletion_steps``; ``toy-map-mean``'s ``scale``:
    ``toy_map_mean_scale``), or the field's ``alias`` where it keeps an older name (``protocols``).
    Its flags: this name with dashes (``--deletion-steps``), and ``--{owner}-{name}`` where that differs."""
    return field.alias or f"{owner}_{field.name}".replace("-", "_")


def owned_flags(owner: str, field: SettingField) -> list[str]:
    named = "--" + owned_name(owner, field).replace("_", "-")
    return list(dict.fromkeys([named, "--" + f"{owner}-{field.name}".replace("_", "-")]))


def add_owned_flags(parser: argparse.ArgumentParser, registry: Mapping[str, Any], title: str) -> None:
    """One flag per setting of each owner in ``registry`` (name -> class with ``Settings``), named
    by :func:`owned_name`; its value is kept as text and read by :func:`given_owned`. A flag that
    another option already has is one error line naming the setting."""
    group = parser.add_argument_group(title)
    for owner, fields in fields_by_method(registry).items():
        for field in fields.values():
            default = "" if field.default is None else f" (default: {field.format(field.default)})"
            try:
                group.add_argument(
                    *owned_flags(owner, field),
                    dest=OWNED + owned_name(owner, field),
                    default=None,
                    metavar=field.metavar,
                    help=f"{owner}: {field.help}{default}".replace("%", "%%"),
                )  # argparse formats help
            except argparse.ArgumentError as exc:  # e.g. a plugin metric "ray" with an option "actors"
                raise InputError(f"{owner}'s setting {field.name!r}: {exc}; rename the setting") from None


def given_owned(args: argparse.Namespace, registry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The owned-setting flags given on a command line, each read by its field (errors name the
    setting by its owned name): owner -> setting -> value."""
    out: dict[str, dict[str, Any]] = {}
    for owner, fields in fields_by_method(registry).items():
        for name, field in fields.items():
            text = getattr(args, OWNED + owned_name(owner, field), None)
            if text is not None:
                out.setdefault(owner, {})[name] = dataclasses.replace(field, name=owned_name(owner, field)).parse(text)
    return out
