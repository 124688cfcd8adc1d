"""Record the golden numbers that refactors must keep (run from the repository root).

    python tests/golden/record.py core       # transformers families -> tests/golden/maps_core.pt + evaluate
    python tests/golden/record.py families   # OpenCLIP / OpenAI clip (needs torchvision) -> maps_families.pt

Each entry is one registered method's raw maps on one tiny random family (built by the family
tests' builders, fixed seeds, both modalities where the method supports them). The evaluate run
is ``m2ib evaluate`` on ``shapes:test:8`` with the shipped model. ``tests/test_golden.py`` holds
the code to these numbers at 1e-6 relative; regenerate only when a change is meant to move them,
and say why in the commit.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "backends"))  # the family builders (test_backends_families)

CORE = ("hf-clip", "siglip", "siglip-padding-mask")
FAMILIES = ("open_clip-vit", "open_clip-vit-variants", "open_clip-resnet", "clip-vit", "clip-resnet")
EVALUATE = [
    "evaluate",
    "--model",
    "shapes",
    "--data",
    "shapes:test:8",
    "--methods",
    "m2ib,gradcam,chefer,rise",
    "--metrics",
    "confidence,deletion,road,localisation",
    "--deletion-steps",
    "4",
    "--setting",
    "m2ib.steps=3",
    "--setting",
    "rise.masks=32",
    "--seed",
    "0",
    # pinned: the numbers were recorded with these recommended settings, which may change
    "--setting",
    "m2ib.vision_layer=0",
    "--setting",
    "m2ib.vision_beta=30",
    "--setting",
    "m2ib.text_layer=0",
    "--setting",
    "m2ib.text_beta=3",
]


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: the numbers then do not depend on the thread count (Kernel SHAP's
    least squares turns a 1e-9 summation-order difference into 1e-4 relative)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def family_maps(names) -> dict[str, torch.Tensor]:
    """{'family/method/field': tensor} for every registered method on every family in ``names``."""
    with one_thread():
        return _family_maps(names)


def _family_maps(names) -> dict[str, torch.Tensor]:
    import dataclasses

    from test_backends_families import BUILDERS, TEXTS, TINY_SETTINGS, build_hf_clip

    import m2ib
    from m2ib.errors import InputError
    from m2ib.inputs import load_image
    from m2ib.methods import REGISTRY

    builders = {"hf-clip": build_hf_clip, **BUILDERS}
    g = torch.Generator().manual_seed(0)
    pictures = [load_image(torch.rand(3, 40 + 7 * i, 56 - 5 * i, generator=g))[0] for i in range(2)]
    out: dict[str, torch.Tensor] = {}
    for name in names:
        _, backend, _, _ = builders[name]()
        for method, cls in REGISTRY.items():
            fields = {f.name for f in dataclasses.fields(cls.Settings)}
            tiny = {k: v for k, v in TINY_SETTINGS.items() if k in fields}
            try:
                exps = (
                    m2ib.explain(backend, pictures, TEXTS[:2], method=method, modalities=cls.modalities, seed=0, **tiny)
                    if "seed" in fields
                    else m2ib.explain(backend, pictures, TEXTS[:2], method=method, modalities=cls.modalities, **tiny)
                )
            except (NotImplementedError, InputError) as exc:  # attention methods on towers without attention
                if backend.supports_attention or "attention" not in str(exc).lower():
                    raise
                continue
            for i, exp in enumerate(exps):
                for field in ("image_map_raw", "text_map_raw", "similarity"):
                    value = getattr(exp, field, None)
                    if value is not None:
                        out[f"{name}/{method}/{i}/{field}"] = torch.as_tensor(value).detach().float().cpu()
    return out


def evaluate_records() -> list[dict]:
    """The pair records (row, method, metrics) of the golden evaluate run, in a stable order."""
    from m2ib.cli import main
    from m2ib.evaluation.runner import read_results

    out = Path(tempfile.mkdtemp())
    try:
        with one_thread():
            code = main([*EVALUATE, "--out", str(out / "run")])
        assert code == 0, code
        _, records = read_results(out / "run" / "results.jsonl")
    finally:
        shutil.rmtree(out)
    pairs = [{"row": r["row"], "method": r["method"], "metrics": r["metrics"]} for r in records if r["kind"] == "pair"]
    return sorted(pairs, key=lambda r: (r["row"], r["method"]))


if __name__ == "__main__":
    which = sys.argv[1]
    torch.manual_seed(0)
    if which == "core":
        torch.save(family_maps(CORE), HERE / "maps_core.pt")
        (HERE / "evaluate_shapes8.json").write_text(json.dumps(evaluate_records(), indent=1, sort_keys=True) + "\n")
    else:
        torch.save(family_maps(FAMILIES), HERE / "maps_families.pt")
