"""Backend for ``transformers`` ``Siglip2Model`` (SigLIP 2's NaFlex towers).

In ``transformers``, SigLIP 2 comes two ways. The fixed-resolution checkpoints
(``google/siglip2-base-patch16-224`` and the like) are ``SiglipModel`` s (``model_type``
"siglip"): :mod:`.siglip` runs them. The NaFlex checkpoints (``google/siglip2-base-patch16-naflex``)
are ``Siglip2Model`` s: the image tower reads a sequence of flattened patches with their grid
(``spatial_shapes``), a linear patch embedding, and position embeddings resized (bilinear,
antialiased) to that grid. This file runs those.

What m2ib does, and how it differs from the NaFlex processor:

- **One grid per backend, not per image.** Every image is resized (squashed) to
  ``grid * patch_size`` pixels and cut into that grid of patches, so maps share one grid and
  one size. The default grid is the largest square the processor's ``max_num_patches`` allows
  (without a processor: the model's position table, 256 in released models; 256 patches: 16 x 16
  at patch 16), which is exactly what the NaFlex processor gives a square image; a non-square
  image would keep its aspect ratio there (another grid), here it is
  squashed. Pass ``grid=(rows, cols)`` to ``Siglip2Backend`` for another shape (the position
  table is resized to it, as the model does for any grid).
- **Per-image grids** (the NaFlex processor's own): ``backend.image_grid(image)`` is the grid the
  processor gives that image (its aspect ratio kept, at most ``max_num_patches`` patches:
  transformers' own ``get_image_size_for_max_num_patches``), and ``backend.for_image(image)`` a
  backend at that grid (the same model, no copy), whose maps come back at that grid and at that
  size: ``m2ib.explain(backend.for_image(im), im, text)`` per image. The image is then resized
  to exactly the processor's size, and the embedding equals ``get_image_features`` on the
  processor's padded patches with its ``pixel_attention_mask`` and ``spatial_shapes`` (tested).
  A batch still shares one grid: images of other grids go through their own backend.
- No padding patches, so no ``pixel_attention_mask``: the split forward equals
  ``get_image_features(patches, pixel_attention_mask, spatial_shapes)`` with or without the
  library's padding (tested to 1e-5).
- The text tower is SigLIP's (bidirectional, the head reads the last position, texts padded to
  the context); see :mod:`.siglip`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing, load_image
from .base import ImageBatch, Modality
from .blocks import hf_block
from .hf_loading import config_int
from .registry import Family, register
from .siglip import SIGLIP_MEAN, SIGLIP_STD, SiglipBackend, SiglipTextTower
from .towers import Tower, TransformerTower, present

if TYPE_CHECKING:  # transformers ships types
    from transformers import Siglip2VisionModel


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p) * (W/p), p * p * C]: the patch layout of transformers'
    Siglip2 image processor (row-major patches; each patch row-major pixels, channels last)."""
    n, c, h, w = pixel_values.shape
    if h % patch_size or w % patch_size:
        raise InputError(f"image of {h}x{w} pixels is not a whole number of {patch_size}-pixel patches")
    x = pixel_values.reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch_size) * (w // patch_size), -1)


def default_grid(max_num_patches: int) -> tuple[int, int]:
    """The largest square grid with at most ``max_num_patches`` patches (the NaFlex processor's grid
    for a square image; the position table is resized to any grid, as the model does)."""
    side = math.isqrt(max_num_patches)
    return side, side


class Siglip2ImageTower(TransformerTower):
    """NaFlex image tower at one fixed grid: no prefix tokens; the attention-pooling head reads every patch."""

    prefix_tokens = 0

    def __init__(self, vision: Siglip2VisionModel, grid: tuple[int, int]):
        if getattr(vision, "head", None) is None or not getattr(vision, "use_head", True):
            raise InputError("SigLIP 2 image towers without the attention-pooling head are not supported")
        if grid[0] < 1 or grid[1] < 1:
            raise InputError(f"SigLIP 2 grid {grid[0]}x{grid[1]}: needs at least one patch a side")
        super().__init__([hf_block(layer) for layer in vision.encoder.layers])
        self.vision, self.patch_grid = vision, (grid[0], grid[1])
        self.patch_size = config_int(vision.config.patch_size, "patch_size")

    def grid(self, layer: int) -> tuple[int, int]:
        return self.patch_grid

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        weight = self.vision.embeddings.patch_embedding.weight
        pixels = batch.pixel_values.to(weight.device, weight.dtype)
        if tuple(pixels.shape[-2:]) != self.image_size:
            raise InputError(
                f"SigLIP 2 backend reads {self.image_size[0]}x{self.image_size[1]} pixels, got "
                f"{tuple(pixels.shape[-2:])}"
            )
        shapes = torch.tensor([self.patch_grid], device=weight.device).expand(len(pixels), 2)
        return self.vision.embeddings(patchify(pixels, self.patch_size), shapes)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.patch_grid[0] * self.patch_size, self.patch_grid[1] * self.patch_size

    def head(self, hidden: torch.Tensor) -> torch.Tensor:  # every token: the probe attends over all
        return self.vision.head(self.vision.post_layernorm(hidden))

    def parts(self):
        v = self.vision
        return present(v.post_layernorm, v.head), list(v.encoder.layers), [v.embeddings]


def siglip2_preprocessing(processor: Any, size: tuple[int, int]) -> ImagePreprocessing:
    """Squash to ``size`` (the grid's pixels), scale, normalise with the processor's mean/std."""
    ip = getattr(processor, "image_processor", processor)
    mean = tuple(getattr(ip, "image_mean", None) or SIGLIP_MEAN)
    std = tuple(getattr(ip, "image_std", None) or SIGLIP_STD)
    resample = getattr(ip, "resample", Image.Resampling.BILINEAR)
    resample = int(getattr(resample, "value", resample))
    return ImagePreprocessing(min(size), (size[0], size[1]), mean, std, resample, resize_mode="squash")


@dataclass
class Siglip2Backend(SiglipBackend):
    """A ``transformers.Siglip2Model`` at one patch grid (see the module docstring)."""

    grid: tuple[int, int] | None = None  # patches (rows, cols); None: the largest square max_num_patches allows
    max_num_patches: int | None = None  # the processor's; None: the model's position table (256 in released models)

    def build_towers(self) -> dict[Modality, Tower]:
        from transformers import Siglip2Model

        if not isinstance(self.model, Siglip2Model):
            raise InputError(f"Siglip2Backend needs a transformers Siglip2Model, got {type(self.model).__name__}")
        vision = self.model.vision_model
        if self.grid is None:
            self.grid = default_grid(self.max_num_patches or vision.embeddings.num_patches)
        image = Siglip2ImageTower(vision, self.grid)
        if self.preprocessing is None:
            self.preprocessing = siglip2_preprocessing(None, image.image_size)
        elif tuple(self.preprocessing.crop) != image.image_size:
            raise InputError(
                f"SigLIP 2 preprocessing gives {tuple(self.preprocessing.crop)} pixels but the grid "
                f"{self.grid[0]}x{self.grid[1]} reads {image.image_size}"
            )
        return {"image": image, "text": SiglipTextTower(self.model.text_model, self.padding_mask)}

    def image_grid(self, image: Any) -> tuple[int, int]:
        """The NaFlex processor's grid for ``image`` (a path, PIL image or tensor): its aspect ratio
        kept, at most ``max_num_patches`` patches (transformers' own rule)."""
        try:  # the PIL processor's copy needs no torchvision
            from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches
        except ImportError:  # older transformers
            from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

        picture, _ = load_image(image)
        patch = self.towers["image"].patch_size
        limit = self.max_num_patches or _vision_model(self.model).embeddings.num_patches
        height, width = get_image_size_for_max_num_patches(picture.height, picture.width, patch, limit)
        return height // patch, width // patch

    def at_grid_of(self, images: Sequence[Any]) -> Siglip2Backend:
        """At the images' own NaFlex grid when they share one (one image always does); images of
        several grids share this backend's grid, as one batch must."""
        grids = {self.image_grid(image) for image in images}
        return self.for_image(images[0]) if len(grids) == 1 else self

    def for_image(self, image: Any) -> Siglip2Backend:
        """This backend at ``image``'s own NaFlex grid (the same model and settings; cheap)."""
        grid = self.image_grid(image)
        patch = self.towers["image"].patch_size
        prep = self.preprocessing
        if prep is None:  # build_towers sets it
            raise InputError("Siglip2Backend.for_image needs the backend's preprocessing: build its towers first")
        size = (grid[0] * patch, grid[1] * patch)
        return replace(
            self,
            grid=grid,
            preprocessing=ImagePreprocessing(min(size), size, prep.mean, prep.std, prep.resample, resize_mode="squash"),
        )


def _vision_model(model: torch.nn.Module) -> Siglip2VisionModel:
    """A ``Siglip2Model``'s image tower."""
    from transformers import Siglip2Model

    if not isinstance(model, Siglip2Model):
        raise InputError(f"Siglip2Backend needs a transformers Siglip2Model, got {type(model).__name__}")
    return model.vision_model


def _is_siglip2_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import Siglip2Model
    except ImportError:  # an older transformers: no SigLIP 2 model can exist
        return False
    return isinstance(model, Siglip2Model)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> Siglip2Backend:
    ip = getattr(processor, "image_processor", processor)
    vision = _vision_model(model)
    max_patches = int(getattr(ip, "max_num_patches", None) or vision.embeddings.num_patches)
    grid = default_grid(max_patches)
    patch = config_int(vision.config.patch_size, "patch_size")
    prep = siglip2_preprocessing(processor, (grid[0] * patch, grid[1] * patch))
    return Siglip2Backend(
        model=model,
        name=name,
        recommended=info.get("recommended", {}),
        tokenizer=tokenizer,
        preprocessing=prep,
        grid=grid,
        max_num_patches=max_patches,
    )


# Loaded by hf: names and transformers directories whose config says model_type "siglip2".
register(
    Family(
        name="SigLIP 2 (NaFlex)",
        supports="transformers Siglip2Model",
        recognises=_is_siglip2_model,
        wrap=_wrap,
        model_type="siglip2",
        model_class="Siglip2Model",
    )
)
