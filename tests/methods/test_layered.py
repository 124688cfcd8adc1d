"""LayerMethod: the block each layer-reading method reads by default, resolved per tower, and
the pick of each side's batch and block; methods take it from methods.layered, not from M2IB."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import torch

from m2ib.backends.base import ImageBatch
from m2ib.methods import REGISTRY
from m2ib.methods.layered import LayerMethod, LayerSettings, default_layer

METHODS = Path(__file__).resolve().parents[2] / "src" / "m2ib" / "methods"


def test_layer_methods_resolve_their_default_block_per_tower(backend):
    blocks = {m: backend.num_layers(m) for m in ("image", "text")}
    nib_rule = lambda n: max(0, default_layer(n) - 1)  # noqa: E731 - one block before M2IB's
    for name, rule in (("m2ib", default_layer), ("gradcam", default_layer), ("nib", nib_rule)):
        method = REGISTRY.get(name)()
        assert isinstance(method, LayerMethod)
        resolved = method.resolved(backend, method.make_settings())
        assert (resolved.vision_layer, resolved.text_layer) == (rule(blocks["image"]), rule(blocks["text"])), name
        negative = method.resolved(backend, method.make_settings(vision_layer=-1, text_layer=-1))
        assert (negative.vision_layer, negative.text_layer) == (blocks["image"] - 1, blocks["text"] - 1), name


def test_a_new_layer_method_gets_its_own_default_and_each_sides_batch(backend):
    @dataclass(frozen=True)
    class FirstSettings(LayerSettings):
        pass

    class First(LayerMethod):
        name = "first-block"
        Settings = FirstSettings

        def default_layer(self, num_layers: int) -> int:
            return 0

        def attribute(self, backend, modality, images, texts, target, settings):
            raise AssertionError("not run here")

    method = First()
    settings = method.resolved(backend, method.make_settings(text_layer=1))
    assert (settings.vision_layer, settings.text_layer) == (0, 1)
    images, texts = ImageBatch(torch.rand(1, 3, 48, 48)), backend.tokenize(["a cat"])
    assert method.side("image", images, texts, settings) == (images, 0)
    assert method.side("text", images, texts, settings) == (texts, 1)


def test_no_method_imports_from_m2ibs_module():
    """Baselines share the layer rules through methods.layered; only the package's index names M2IB."""
    for path in METHODS.glob("*.py"):
        if path.name in ("__init__.py", "m2ib.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                named = (node.level, node.module)
                assert named not in ((1, "m2ib"), (0, "m2ib.methods.m2ib")), f"{path.name} imports from M2IB's module"
