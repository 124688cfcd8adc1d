"""Errors that m2ib raises for bad input: one line, saying what and what to do."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence


class M2IBError(Exception):
    """Base class of every error m2ib raises on purpose (the CLI prints it on one line, exit 2)."""


class InputError(M2IBError, ValueError):
    """An image, text or setting the user gave cannot be used.

    ``settings``: the settings the message names, as Python spells them (``text_beta``), so that
    a front end can say them in its own words (the CLI: ``--text-beta``; see :func:`spelled`).
    """

    def __init__(self, *args: object, settings: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.settings = tuple(settings)


class SettingWarning(UserWarning):
    """A warning that names settings (``settings``, as in :class:`InputError`)."""

    def __init__(self, *args: object, settings: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.settings = tuple(settings)


def spelled(problem: object, spell: Callable[[str], str]) -> str:
    """The text of an error or warning with each setting it names as ``spell(name)`` (a bare
    word only: ``lr=nan``, a value's echo, stays as it is)."""
    text = str(problem)
    for name in getattr(problem, "settings", ()):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w=-])", lambda word: spell(word[0]), text)
    return text


class ModelNotAvailableError(M2IBError, OSError):
    """Model weights cannot be found locally and cannot be downloaded."""


class RunError(M2IBError, RuntimeError):
    """A long run could not go on (e.g. a Ray worker failed); what it finished is kept."""
