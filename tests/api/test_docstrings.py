"""The public API's docstrings, as the site's API reference shows them.

* Every name a ``docs/api/*.md`` page renders (its ``:::`` directives) has a docstring of its own
  (not a dataclass's generated signature, not one inherited), and so does each public method or
  property of a documented class that the page shows.
* Entry points (every documented function and class, bar the few named in
  :data:`NO_EXAMPLE` with the reason) have an ``Examples:`` section.
* A registered method's or metric's class names its paper (its ``paper`` link); a settings
  dataclass documents every field with its default, as the code has it (``Attributes:``).
* The examples run as written, from the repository root, and print what they say (slow).
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
MODULES = [
    "m2ib",
    "m2ib.api",
    "m2ib.explanation",
    "m2ib.comparison",
    "m2ib.results",
    "m2ib.methods",
    "m2ib.methods.m2ib",
    "m2ib.methods.gradcam",
    "m2ib.methods.saliency",
    "m2ib.methods.rise",
    "m2ib.methods.kernelshap",
    "m2ib.methods.chefer",
    "m2ib.methods.rollout",
    "m2ib.methods.nib",
    "m2ib.methods.gradeclip",
    "m2ib.methods.legrad",
    "m2ib.metrics.confidence",
    "m2ib.metrics.deletion",
    "m2ib.metrics.road",
    "m2ib.metrics.localisation",
    "m2ib.metrics.sanity",
    "m2ib.metrics.collage",
    "m2ib.metrics.grounding",
    "m2ib.metrics.roar",
    "m2ib.backends.base",
    "m2ib.generative.api",
    "m2ib.generative.result",
    "m2ib.datasets.tables",
    "m2ib.evaluation.runner",
    "m2ib.evaluation.store",
    "m2ib.viz.figure",
    "m2ib.viz.interaction",
    "m2ib.tuning.tune",
    "m2ib.interactions.api",
    "m2ib.interactions.result",
    "m2ib.auditing",
]

# Documented functions and classes that are not entry points, so show no example; each with why.
NO_EXAMPLE = {
    "m2ib.registry.Registry": "the registries' type; extending.md shows registering a method",
    "m2ib.settings.setting": "a field maker for settings dataclasses; extending.md shows one in use",
    "m2ib.methods.base.Method": "an abstract base; each method class below it has an example",
    "m2ib.metrics.base.Metric": "an abstract base; each metric class below it has an example",
    "m2ib.auditing.aggregate.Summary": "a part of AuditResult, whose example reaches it",
    "m2ib.backends.base.Geometry": "a record a backend carries; Backend's example reads it",
    "m2ib.generative.methods.base.AnswerMethod": "an abstract base; explain_answer's example runs one",
}

_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)
# A directive's ``members:`` option: a list of names, or false (none shown).
_MEMBERS = re.compile(r"^:::\s+([\w.]+)\s*\n(?:[ \t]+.*\n)*?[ \t]+members:\s*(?:\[([^\]]*)\]|(false))", re.M)


def documented() -> list[str]:
    """Every dotted name a ``:::`` directive of docs/api/*.md renders, in page order."""
    names = [name for page in API_PAGES for name in _DIRECTIVE.findall(page.read_text())]
    assert len(names) > 20, f"found only {names} in {[p.name for p in API_PAGES]}"
    return names


def resolve(dotted: str) -> Any:
    """The object at ``dotted``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def own_doc(obj: Any) -> str:
    """``obj``'s own docstring: '' when a class has none (a dataclass's generated
    ``Name(field: type, ...)`` and a base class's docstring do not count)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if doc.startswith(f"{obj.__name__}("):
            return ""
        return inspect.cleandoc(doc)
    return inspect.cleandoc(getattr(obj, "__doc__", None) or "")


def shown_members(dotted: str, cls: type) -> list[str]:
    """The public methods and properties of ``cls`` its page shows: those the directive's
    ``members:`` option names, else every one defined in the class itself."""
    for page in API_PAGES:
        for name, members, none in _MEMBERS.findall(page.read_text()):
            if name == dotted:
                return [] if none else [m.strip() for m in members.split(",") if m.strip()]
    return [
        name
        for name, value in cls.__dict__.items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, (property, classmethod)))
    ]


def test_the_api_pages_are_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in API_PAGES:
        assert f"api/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("dotted", documented())
def test_every_documented_name_has_a_docstring(dotted):
    obj = resolve(dotted)
    doc = own_doc(obj)
    assert len(doc) >= 40, f"{dotted}: no docstring of its own, or a trivial one: {doc!r}"
    if inspect.isclass(obj):
        for member in shown_members(dotted, obj):
            value = inspect.getattr_static(obj, member, None)  # None: an annotation only (a ClassVar)
            if isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                text = inspect.cleandoc(value.__doc__ or "")
                assert len(text) >= 15, f"{dotted}.{member}: no docstring"


@pytest.mark.parametrize("dotted", documented())
def test_entry_points_have_an_example(dotted):
    obj = resolve(dotted)
    if inspect.ismodule(obj) or dotted in NO_EXAMPLE or is_settings(obj):
        return
    assert "Examples:" in own_doc(obj), f"{dotted}: no Examples: section (or name it in NO_EXAMPLE, with why)"


def is_settings(obj: Any) -> bool:
    from m2ib.settings import SettingsBase

    return inspect.isclass(obj) and issubclass(obj, SettingsBase)


def test_every_registered_method_and_metric_is_documented_with_its_paper_and_settings():
    from m2ib.methods import REGISTRY as METHODS
    from m2ib.metrics import REGISTRY as METRICS

    names = set(documented())
    for registry in (METHODS, METRICS):
        for name in registry.names():
            cls = registry[name]
            dotted = f"{cls.__module__}.{cls.__qualname__}"
            assert dotted in names, f"{dotted} ({name}) has no ::: entry in docs/api/"
            paper = getattr(cls, "paper", "")
            if paper:
                assert paper in own_doc(cls), f"{dotted}: the docstring does not link its paper {paper}"
            settings = cls.Settings
            if dataclasses.fields(settings):
                assert f"{settings.__module__}.{settings.__qualname__}" in names, (
                    f"{settings.__name__} not in docs/api/"
                )


def field_entries(doc: str) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Attributes:`` section (continuation lines joined)."""
    section = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, re.M)
    assert section, "no Attributes: section"
    entries: dict[str, str] = {}
    current = None
    for line in section.group(1).splitlines():
        found = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
        if found:
            current = found.group(1)
            entries[current] = found.group(2)
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("dotted", [d for d in documented() if is_settings(resolve(d))])
def test_settings_docstrings_give_every_field_and_its_default(dotted):
    settings = resolve(dotted)
    entries = field_entries(own_doc(settings))
    for f in dataclasses.fields(settings):
        assert f.name in entries, f"{dotted}: field {f.name} is not in Attributes:"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        said = re.search(r"[Dd]efault:? ``([^`]*)``", entries[f.name])
        assert said, f"{dotted}.{f.name}: say 'default ``{default!r}``'"
        assert said.group(1) == repr(default), (
            f"{dotted}.{f.name}: the docstring says {said.group(1)}, the code {default!r}"
        )
    assert set(entries) <= {f.name for f in dataclasses.fields(settings)}, f"{dotted}: documents fields it has not"


def test_every_public_name_has_an_example():
    import m2ib

    for name in [
        "load",
        "explain",
        "compare",
        "similarity",
        "audit",
        "explain_answer",
        "list_methods",
        "list_models",
        "Explanation",
        "Comparison",
        "Backend",
    ]:
        assert "Examples:" in (getattr(m2ib, name).__doc__ or ""), name


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    found = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert found.failed == 0
    assert found.attempted > 0
