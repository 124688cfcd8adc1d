"""Small random CLIPs built inside the tests (offline, seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
# The research code the benchmarks share (benchmarks/research/, outside the package) imports as `research`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
# Tests live in one folder per room of src/m2ib (tests/backends/, tests/methods/, ...); some share helpers
# by importing each other (the family builders of backends/test_backends_families.py), whatever folder
# pytest happens to collect first, so every room's folder is importable.
TESTS = Path(__file__).resolve().parent
for _room in sorted(TESTS.iterdir()):
    if _room.is_dir() and any(_room.glob("test_*.py")) and not (_room / "__init__.py").exists():
        sys.path.insert(0, str(_room))

from m2ib.models import RandomCLIPSpec, random_clip  # noqa: E402

# A 48 px input with 12 px patches: a 4x4 grid, nothing hard-coded to 224/32.
SMALL = RandomCLIPSpec(
    image_size=48,
    patch_size=12,
    vision_width=32,
    vision_layers=3,
    vision_heads=2,
    text_width=32,
    text_layers=3,
    text_heads=2,
    embed_dim=16,
)


@pytest.fixture()
def registered():
    """``registered(registry, *entries)``: entries added to an m2ib registry for this test only."""
    added = []

    def add(registry, *entries):
        for entry in entries:
            registry.register(entry)
            added.append((registry, entry.name))

    yield add
    for registry, name in reversed(added):
        registry.unregister(name)


@pytest.fixture(scope="session")
def small_clip():
    """(CLIPModel, tokenizer) with random weights; do not modify (tests check it is unchanged)."""
    return random_clip(SMALL, seed=1)


@pytest.fixture()
def backend(small_clip):
    import m2ib

    model, tokenizer = small_clip
    return m2ib.load(model, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40 + 7 * i, 56 - 5 * i, generator=g) for i in range(3)]


@pytest.fixture(scope="session")
def fast():
    """Settings that exercise every code path quickly."""
    return dict(steps=3, samples=4)


@pytest.fixture(scope="session")
def saved_llava(tmp_path_factory):
    """A folder with a random tiny LLaVA saved by save_pretrained (``model/``, tests/generative/tiny_llava.py)
    and an 8 px image (``scene.png``): what ``m2ib explain --answer`` and ``m2ib serve`` load."""
    from PIL import Image
    from tiny_llava import tiny_llava

    folder = tmp_path_factory.mktemp("llava")
    model, processor = tiny_llava(seed=0)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    g = torch.Generator().manual_seed(3)
    Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy()).save(folder / "scene.png")
    return folder


@pytest.fixture(scope="session")
def tune_tiny():
    """m2ib tune's tests: the built-in random-tiny model (4 + 4 blocks, 64 px) and 3 shapes pairs as tune data."""
    import m2ib
    from m2ib.datasets.tables import load_table
    from m2ib.tuning.data import tune_data

    backend = m2ib.load("random-tiny")
    rows = load_table("shapes:val:3", size=backend.geometry.image_size[0]).rows
    return backend, rows, tune_data(backend, rows, 0)
