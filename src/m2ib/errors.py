"""Errors that m2ib raises for bad input: one line, saying what and what to do."""

from __future__ import annotations


class M2IBError(Exception):
    """Base class of every error m2ib raises on purpose (the CLI prints it on one line, exit 2)."""


class InputError(M2IBError, ValueError):
    """An image, text or setting the user gave cannot be used."""


class ModelNotAvailableError(M2IBError, OSError):
    """Model weights cannot be found locally and cannot be downloaded."""


class RunError(M2IBError, RuntimeError):
    """A long run could not go on (e.g. a Ray worker failed); what it finished is kept."""
