"""One registry type for everything a user or a contributor adds: methods, interaction methods,
metrics and model families.

Each kind has one :class:`Registry` (``m2ib.methods.REGISTRY``, ``m2ib.interactions.REGISTRY``,
``m2ib.metrics.REGISTRY``, ``m2ib.backends.registry.FAMILIES``) with one vocabulary:

* ``register(entry)``: add an entry under its ``name`` (usable as a class decorator);
* ``get(name)``: the entry, or one :class:`~m2ib.errors.InputError` line naming the choices;
* ``names()``: every name, in registration order;
* ``describe(name)``: a :class:`Description` (title, paper link, sides) for ``m2ib list``.

Code outside the package adds entries through the entry-point group ``m2ib.plugins``, as pytest
and Sphinx plugins do: in the plugin's ``pyproject.toml``::

    [project.entry-points."m2ib.plugins"]
    my_plugin = "my_package.m2ib_plugin"

Importing ``my_package.m2ib_plugin`` registers its entries with the usual decorators (if the entry
point names a function instead of a module, it is called once). Plugins are loaded the first time
any registry is read, never at import, so ``import m2ib`` stays cheap and a plugin may import
``m2ib`` freely. A plugin that fails to load raises :class:`PluginError` naming it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import M2IBError

T = TypeVar("T")

PLUGIN_GROUP = "m2ib.plugins"


class PluginError(M2IBError):
    """A plugin of the ``m2ib.plugins`` entry-point group failed to load."""


@dataclass(frozen=True)
class Description:
    """What ``m2ib list`` shows of one entry."""

    kind: str  # "method", "interaction method", "metric", "model family"
    name: str
    title: str
    paper: str = ""  # link to the paper ("" when there is none)
    sides: tuple[str, ...] = ()  # what it explains or measures: "image", "text", "phrases"; a family's none
    source: str = ""  # the module that registered it (a plugin's module for plugin entries)


def _describe_by_attributes(kind: str, entry: Any) -> Description:
    """A Description read from an entry's ``name``, ``title``, ``paper`` and ``sides``/``modalities``."""
    sides = getattr(entry, "sides", None) or getattr(entry, "modalities", None) or ()
    return Description(
        kind,
        entry.name,
        getattr(entry, "title", entry.name),
        getattr(entry, "paper", ""),
        tuple(sides),
        getattr(entry, "__module__", ""),
    )


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    ``check(entry, registry)`` runs before an entry is added and raises ``ValueError`` for an
    entry that would break the kind's rules (a metric recording another metric's key, a family
    claiming a name prefix already taken). ``describe(entry)`` gives the entry's Description
    (default: read from its ``name``/``title``/``paper``/``sides`` attributes).
    """

    def __init__(
        self,
        kind: str,
        check: Callable[[T, Registry[T]], None] | None = None,
        describe: Callable[[T], Description] | None = None,
    ) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._check = check
        self._describe = describe or (lambda entry: _describe_by_attributes(kind, entry))

    # --- the vocabulary -----------------------------------------------------------------
    def register(self, entry: T) -> T:
        """Add ``entry`` under ``entry.name``; returns it (so it works as a class decorator)."""
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty str `name` to be registered, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if self._check is not None:
            self._check(entry, self)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is one InputError line listing the choices."""
        from .errors import InputError

        entries = self._loaded()
        if name not in entries:
            raise InputError(f"unknown {self.kind} {name!r}: choose one of {', '.join(entries)}")
        return entries[name]

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (plugins' entries last)."""
        return tuple(self._loaded())

    def describe(self, name: str) -> Description:
        """What ``m2ib list`` prints of the entry ``name`` (its title, paper, sides)."""
        return self._describe(self.get(name))

    def select(self, spec: str, option: str) -> list[str]:
        """A name, a comma list or ``all`` (as typed after ``option``) -> names, in the order given, once each."""
        from .errors import InputError

        if spec.strip() == "all":
            return list(self.names())
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if not names:
            raise InputError(f"{option} is empty: give a {self.kind} name, a comma list or 'all'")
        for name in names:
            if name not in self:
                raise InputError(
                    f"{option}: unknown {self.kind} {name!r}: choose from {', '.join(self.names())}, or 'all'"
                )
        return list(dict.fromkeys(names))

    # --- read as a mapping (name -> entry) ------------------------------------------------
    def _loaded(self) -> dict[str, T]:
        load_plugins()
        return self._entries

    def __getitem__(self, name: str) -> T:
        return self._loaded()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())

    def keys(self) -> tuple[str, ...]:
        """The names, as :meth:`names`."""
        return self.names()

    def values(self) -> list[T]:
        """The entries, in registration order."""
        return list(self._loaded().values())

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, in registration order."""
        return list(self._loaded().items())

    def unregister(self, name: str) -> T:
        """Remove an entry (tests that register a throwaway entry clean up with it)."""
        return self._entries.pop(name)

    def __repr__(self) -> str:
        return f"<Registry of {len(self._entries)} {self.kind}(s): {', '.join(self._entries)}>"


_plugins: dict[str, str] = {}  # entry-point name -> "module:attr", once loaded (or while loading)
_failed: dict[str, str] = {}  # entry-point name -> the error, raised again at every read
_entry_points: list[importlib.metadata.EntryPoint] | None = None  # the group's entry points, read once


def load_plugins() -> dict[str, str]:
    """Import every ``m2ib.plugins`` entry point not imported yet; returns name -> value of those loaded.

    The installed entry points are read once per process (reading them scans every installed
    package's metadata, milliseconds a time, and registries are read in per-record loops). A plugin
    that failed raises again at every read, so a broken plugin is never silently left out."""
    global _entry_points
    if _entry_points is None:
        _entry_points = list(importlib.metadata.entry_points(group=PLUGIN_GROUP))
    for ep in _entry_points:
        if ep.name in _failed:
            raise PluginError(_failed[ep.name])
        if ep.name in _plugins:
            continue
        _plugins[ep.name] = ep.value  # before loading: a plugin that reads a registry does not load itself again
        try:
            loaded = ep.load()
            if callable(loaded) and not inspect.isclass(loaded):
                loaded()
        except Exception as exc:  # a plugin's own bug: name it, keep its traceback as the cause
            del _plugins[ep.name]
            _failed[ep.name] = (
                f"m2ib plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
                "fix or uninstall the package that provides it"
            )
            raise PluginError(_failed[ep.name]) from exc
    return dict(_plugins)


__all__ = ["Description", "PLUGIN_GROUP", "PluginError", "Registry", "load_plugins"]
