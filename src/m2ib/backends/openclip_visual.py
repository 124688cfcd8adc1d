"""OpenCLIP's image side, shared by its families (OpenCLIP, OpenCLIP with a Hugging Face text tower,
OpenAI clip): the tower adapter for a model's ``visual`` and its eval preprocessing."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .openai_towers import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, OpenAIViTTower
from .resnet_clip import ResNetTower, is_modified_resnet
from .timm_stages import TimmStagesTower, is_timm_staged
from .timm_towers import TimmViTTower, is_timm_transformer
from .towers import Tower

# OpenCLIP and OpenAI clip ship no types: their models and towers are typed Any (duck-typed modules).
RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def image_tower(visual: Any) -> Tower:
    """The image tower adapter for an OpenAI-layout ``visual``: ResNet or ViT."""
    if is_modified_resnet(visual):
        return ResNetTower(visual)
    if hasattr(visual, "conv1") and hasattr(visual, "transformer"):
        return OpenAIViTTower(visual)
    if is_timm_transformer(visual):
        return TimmViTTower(visual)
    if is_timm_staged(visual):
        return TimmStagesTower(visual)
    trunk = getattr(visual, "trunk", None)
    what = f"timm trunk {type(trunk).__name__}" if trunk is not None else f"image tower {type(visual).__name__}"
    raise InputError(
        f"{what} is not supported (OpenCLIP ViT and ModifiedResNet towers and timm ViT trunks are; "
        "ConvNeXt and FastViT stages too; windowed trunks such as Swin are not yet)"
    )


def preprocessing_of(model: Any) -> ImagePreprocessing:
    """OpenCLIP's eval transform for ``model`` (``visual.preprocess_cfg``), as ImagePreprocessing."""
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = cfg.get("size") or getattr(visual, "image_size", None) or visual.input_resolution
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_CLIP_STD)
    mode = cfg.get("resize_mode", "shortest")
    if mode == "shortest" and size[0] != size[1]:
        mode = "squash"  # OpenCLIP resizes to a non-square size exactly, then crops nothing
    if mode not in ("shortest", "squash"):
        raise InputError(
            f"OpenCLIP resize_mode {mode!r} is not supported yet (shortest or squash); pass "
            "preprocessed pixel_values instead"
        )
    resample = RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    return ImagePreprocessing(
        size[0] if mode == "shortest" else min(size),
        size,
        mean,
        std,
        int(resample),
        resize_mode=mode,
        crop_rounding="round",
    )
