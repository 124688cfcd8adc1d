"""Errors and warnings name settings as Python spells them; a front end respells them."""

from __future__ import annotations

import pickle

from m2ib.errors import InputError, SettingWarning, spelled


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_spelled_respells_only_the_named_settings_as_words():
    error = InputError(
        "lr=1e30 diverged: lower lr (now 1e30) or text_beta; lr_max and my-lr stay; lr.", settings=("lr", "text_beta")
    )
    assert spelled(error, flag) == (
        "lr=1e30 diverged: lower --lr (now 1e30) or --text-beta; lr_max and my-lr stay; --lr."
    )
    assert str(error).startswith("lr=1e30 diverged: lower lr (now")  # Python's own text is unchanged
    assert spelled(SettingWarning("raise var", settings=("var",)), flag) == "raise --var"
    assert spelled(ValueError("lower lr"), flag) == "lower lr"  # names nothing: as it is
    assert spelled(InputError("lower lr"), flag) == "lower lr"


def test_an_error_naming_settings_survives_pickling():
    """Ray workers send errors back pickled: the named settings come with them."""
    again = pickle.loads(pickle.dumps(InputError("lower lr", settings=("lr",))))
    assert str(again) == "lower lr" and again.settings == ("lr",)
