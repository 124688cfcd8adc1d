"""The one registry type: the same vocabulary and rules for methods, interactions, metrics and families."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from m2ib.backends.registry import FAMILIES
from m2ib.errors import InputError
from m2ib.interactions import REGISTRY as INTERACTIONS
from m2ib.methods import REGISTRY as METHODS
from m2ib.metrics import REGISTRY as METRICS
from m2ib.registry import Registry


@dataclass(frozen=True)
class Entry:
    name: str
    title: str = "an entry"
    paper: str = "https://example.org"
    sides: tuple[str, ...] = ("image",)


def test_vocabulary():
    reg: Registry[Entry] = Registry("thing")
    a, b = reg.register(Entry("a")), reg.register(Entry("b"))
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and reg.get("b") is b and reg["a"] is a
    assert "a" in reg and "c" not in reg and len(reg) == 2 and dict(reg) == {"a": a, "b": b}
    assert reg.describe("a").sides == ("image",) and reg.describe("a").kind == "thing"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Entry("a"))
    with pytest.raises(ValueError, match="name"):
        reg.register(Entry(""))
    with pytest.raises(InputError, match=r"^unknown thing 'c': choose one of a, b$"):
        reg.get("c")
    assert reg.select("b, a, b", "--things") == ["b", "a"] and reg.select("all", "--things") == ["a", "b"]
    with pytest.raises(InputError, match="--things: unknown thing 'z'"):
        reg.select("a,z", "--things")
    with pytest.raises(InputError, match="--things is empty"):
        reg.select(" , ", "--things")
    reg.unregister("b")
    assert reg.names() == ("a",)


def test_every_kind_is_one_registry_with_its_rules():
    for registry in (METHODS, INTERACTIONS, METRICS, FAMILIES):
        assert isinstance(registry, Registry)
        for name in registry.names():
            described = registry.describe(name)
            assert described.name == name and described.title
    assert METHODS.names()[0] == "m2ib" and METHODS.describe("m2ib").paper.startswith("https://arxiv.org/")
    with pytest.raises(ValueError, match="recorded by another metric"):  # a metric's own rule, kept
        METRICS.register(type("Copy", (METRICS["collage"],), {"name": "collage-copy"}))
    assert "collage-copy" not in METRICS
