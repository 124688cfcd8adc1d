"""The zoo coverage benchmark (benchmarks/zoo_coverage.py) on a handful of OpenCLIP configs, one per
tower kind: covered ones pass parity, M2IB and an attention method; uncovered ones say why.
Needs open_clip and timm (the families environment); skips elsewhere."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from test_backends_families import need_open_clip

ROOT = Path(__file__).resolve().parents[2]
# native ViT, ResNet, timm MAP head, hybrid (conv stem) timm ViT, rotary timm Eva, post-norm Eva (EVA02-E), ConvNeXt
# stages, FastViT stages, relative-position timm ViT, HF XLM-R text, HF mT5 text, CoCa (attentional pooler, appended
# class token)
COVERED = [
    "ViT-B-32",
    "RN50",
    "ViT-B-16-SigLIP2",
    "ViTamin-S",
    "EVA02-B-16",
    "EVA02-E-14",
    "convnext_base",
    "MobileCLIP-S1",
    "vit_relpos_medium_patch16_cls_224",
    "xlm-roberta-base-ViT-B-32",
    "mt5-base-ViT-B-32",
    "coca_ViT-B-32",
    "coca_roberta-ViT-B-32",
]
UNCOVERED = {"swin_base_patch4_window7_224": "timm trunk SwinTransformer is not supported"}


def zoo(monkeypatch):
    spec = importlib.util.spec_from_file_location("zoo_coverage", ROOT / "benchmarks" / "zoo_coverage.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "zoo_coverage", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_zoo_rows_one_per_tower_kind(tmp_path, monkeypatch):
    need_open_clip()
    module = zoo(monkeypatch)
    rows = {r.config: r for r in module.run(COVERED + list(UNCOVERED), progress=False)}
    for name in COVERED:
        row = rows[name]
        assert row.covered and row.reason == "", (name, row)
        assert row.image_parity <= 1e-5 and row.text_parity <= 1e-5
    assert (
        rows["RN50"].attention == rows["convnext_base"].attention == "none in tower"
        and rows["ViT-B-16-SigLIP2"].attention == "chefer"
    )
    assert rows["ViT-B-16-SigLIP2"].image_tower == "timm VisionTransformer"
    assert rows["xlm-roberta-base-ViT-B-32"].text_tower == "HF XLMRobertaModel"
    for name, why in UNCOVERED.items():
        assert not rows[name].covered and why in rows[name].reason, (name, rows[name])
    assert module.main(["--models", "ViT-B-32", "swin_base_patch4_window7_224", "--out", str(tmp_path / "zoo.md")]) == 0
    text = (tmp_path / "zoo.md").read_text()
    assert "covered: 1 of 2 OpenCLIP configs (50.0 %)" in text and text.count("\n| ") == 2  # one row per config


def test_transformers_rows_are_covered(monkeypatch):
    """benchmarks/zoo_transformers.py: CLIP, SigLIP, SigLIP 2 (NaFlex) and MetaCLIP 2 copies pass parity,
    M2IB and Chefer et al. (no OpenCLIP needed)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delitem(sys.modules, "zoo_coverage", raising=False)
    import zoo_transformers

    rows = zoo_transformers.run()
    assert [r.config for r in rows] == [
        "transformers CLIPModel",
        "transformers SiglipModel",
        "transformers Siglip2Model",
        "transformers MetaClip2Model",
    ]
    assert all(r.covered and r.reason == "" for r in rows), rows
