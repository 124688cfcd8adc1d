"""Refactors keep the numbers: every method's raw maps on every family, and one evaluate run,
against the golden files recorded before the change (``tests/golden/record.py``).

Where a change is meant to move numbers, the key is listed in ``CHANGED`` with the reason, and a
test elsewhere shows the old value was wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

import record  # noqa: E402

# Relative to each map's largest value. Float32 kernels round differently across CPUs and runs (MKL's
# code paths, thread splits): on the 2-core Xeon of 2026-12 the same commit gives up to 1.4e-6 of the
# maximum (hf-clip kernelshap; SigLIP similarities 1.3e-6), so 1e-6 failed on an unchanged tree. 1e-5 is
# 7x that noise and still far below a real change (a wrong row, sign or layer moves maps by > 1e-2).
RTOL = 1e-5
# Maps that are ill-conditioned in float32, with the noise of the unchanged tree measured on the 2-core
# Xeon of 2026-12 (torch 2.14.1) against the files recorded on another CPU: NIB sums h * grad over the
# channels, which cancel (its text map on the OpenCLIP ViT variants moves by 3.9e-3 of its maximum);
# Kernel SHAP's regression amplifies rounding on the ResNet towers (1.3e-4). Still far below a real change.
NOISY_RTOL = {"nib": 1e-2, "kernelshap": 1e-3}
# Evaluate records are differences of similarities (ROAD, deletion AUCs), often near 0, and ROAD ranks
# pixels, so float rounding of a map can swap two near-tied pixels: the unchanged tree moves them by up
# to 4.6e-5 (chefer image_road_morf, shapes:test:0) on this machine. An absolute 1e-4 holds them; a real
# change (another row, layer or sign) moves them by 1e-2 and more.
EVALUATE_ATOL = 1e-4

# family/method/pair/field keys whose golden value was wrong, and why (see test_pooled_rows.py).
# Chefer, rollout, LeGrad and Grad-ECLIP read the row of the token the head pools. Before, the
# backends of these towers did not say which one it was, and the methods read the default row,
# which test_pooled_rows.py shows the head never reads.
_SIGLIP_TEXT = "SigLIP's text head pools the last position (padding included); the maps read the last real token's row"
_AVG_IMAGE = "this OpenCLIP image head averages the patches; the maps read the class token's row"
_LAST_TEXT = (
    "this bidirectional OpenCLIP text head pools the last position (padding included); the maps read "
    "the last real token's row"
)
CHANGED: dict[str, str] = {
    **{
        f"{family}/{method}/{pair}/text_map_raw": _SIGLIP_TEXT
        for family in ("siglip", "siglip-padding-mask")
        for method in ("chefer", "rollout", "legrad", "gradeclip")
        for pair in (0, 1)
        if (family, method, pair) != ("siglip", "gradeclip", 0)
    },  # zero before and after (ReLU of a negative sum)
    **{
        f"open_clip-vit-variants/{method}/{pair}/image_map_raw": _AVG_IMAGE
        # LeGrad's image side (pooling="mean") reads the mean of the rows either way: unchanged
        for method in ("chefer", "rollout", "gradeclip")
        for pair in (0, 1)
    },
    **{
        f"open_clip-vit-variants/{method}/{pair}/text_map_raw": _LAST_TEXT
        for method in ("chefer", "rollout", "legrad", "gradeclip")
        for pair in (0, 1)
    },
}


def _changed(key: str) -> bool:
    return any(key.startswith(prefix) for prefix in CHANGED)


def assert_maps_match(golden: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> None:
    assert sorted(now) == sorted(golden), "methods or families appeared or vanished"
    bad = []
    for key, want in golden.items():
        got = now[key]
        scale = float(want.abs().max()) if want.numel() else 0.0
        rtol = NOISY_RTOL.get(key.split("/")[1], RTOL)
        same = got.shape == want.shape and torch.allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-12))
        if same == _changed(key):
            bad.append(f"{key}: {'unchanged but listed in CHANGED' if same else 'differs'}")
    assert not bad, "\n".join(bad)


def test_core_family_maps_unchanged():
    assert_maps_match(torch.load(GOLDEN / "maps_core.pt"), record.family_maps(record.CORE))


def test_optional_family_maps_unchanged():
    from test_backends_families import need_clip, need_open_clip

    need_open_clip(), need_clip()  # skip with the reason where the extras are missing (.ci/run has them)
    assert_maps_match(torch.load(GOLDEN / "maps_families.pt"), record.family_maps(record.FAMILIES))


@pytest.mark.slow
def test_evaluate_run_unchanged():
    golden = json.loads((GOLDEN / "evaluate_shapes8.json").read_text())
    now = record.evaluate_records()
    assert [(r["row"], r["method"]) for r in now] == [(r["row"], r["method"]) for r in golden]
    for got, want in zip(now, golden):
        assert got["metrics"].keys() == want["metrics"].keys()
        for name, value in want["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, rel=RTOL, abs=EVALUATE_ATOL, nan_ok=True), (
                got["row"],
                got["method"],
                name,
            )
