"""Backend for ``transformers`` ``CLIPModel`` checkpoints (OpenAI CLIP, fine-tunes, our shapes model).

Two towers on the shared tower code (:mod:`.towers`): the image tower pools its class token, the
text tower (causal, padding keys masked) the end-of-text token by transformers' own rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .base import Geometry, ImageBatch, Modality, TextBatch
from .blocks import hf_block, text_mask
from .hf_loading import config_int, is_transformers_directory, load_directory, load_hf, sub_config
from .hf_tokens import hf_encode, hf_readable
from .openai_towers import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .registry import Family, register
from .towers import ClassTokenTower, PooledTextTower, Tower, TowersBackend, present

if TYPE_CHECKING:  # transformers ships types: these towers adapt its CLIP-layout models and their tower modules
    from transformers import (
        CLIPModel,
        CLIPTextModel,
        CLIPVisionModel,
        MetaClip2Model,
        MetaClip2TextModel,
        MetaClip2VisionModel,
    )

    CLIPLayoutModel = CLIPModel | MetaClip2Model

SUPPORTED_ATTENTION = ("eager", "sdpa")


def preprocessing_from(processor: Any, image_size: int) -> ImagePreprocessing:
    """Read a CLIPImageProcessor's settings; OpenAI CLIP's when there is none."""
    ip = getattr(processor, "image_processor", processor)
    if ip is None:
        return ImagePreprocessing(image_size, (image_size, image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    size = getattr(ip, "size", None) or {}
    crop = getattr(ip, "crop_size", None) or {}
    if not isinstance(size, dict):
        size = dict(size)
    if not isinstance(crop, dict):
        crop = dict(crop)
    shortest = size.get("shortest_edge") or min(size.get("height", image_size), size.get("width", image_size))
    if getattr(ip, "do_center_crop", True) and crop:
        crop_hw = (int(crop.get("height", image_size)), int(crop.get("width", image_size)))
    else:
        crop_hw = (int(shortest), int(shortest))
    resample = getattr(ip, "resample", Image.Resampling.BICUBIC)
    resample = int(getattr(resample, "value", resample))
    return ImagePreprocessing(int(shortest), crop_hw, tuple(ip.image_mean), tuple(ip.image_std), resample)


class HFCLIPImageTower(ClassTokenTower):
    """``vision_model`` (embeddings, ``pre_layrnorm``, encoder layers, ``post_layernorm``) and the
    model's ``visual_projection``; the head reads the class token."""

    def __init__(self, vision: CLIPVisionModel | MetaClip2VisionModel, projection: torch.nn.Linear):
        super().__init__([hf_block(layer) for layer in vision.encoder.layers])
        self.vision, self.projection = vision, projection
        grid = config_int(vision.config.image_size, "image_size") // config_int(vision.config.patch_size, "patch_size")
        self.patch_grid = (grid, grid)

    def grid(self, layer: int) -> tuple[int, int]:
        return self.patch_grid

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        weight = self.vision.embeddings.patch_embedding.weight
        return self.vision.pre_layrnorm(self.vision.embeddings(batch.pixel_values.to(weight.device, weight.dtype)))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision.post_layernorm(pooled))

    def parts(self):
        v = self.vision
        return present(self.projection, v.post_layernorm), list(v.encoder.layers), present(v.embeddings, v.pre_layrnorm)


class HFCLIPTextTower(PooledTextTower):
    """``text_model`` (causal, padding keys masked) and the model's ``text_projection``. The head
    reads the end-of-text token as transformers does: configs with ``eos_token_id == 2`` (legacy)
    pool the largest id, others the first ``eos_token_id``."""

    def __init__(self, text: CLIPTextModel | MetaClip2TextModel, projection: torch.nn.Linear, eos_token_id: int):
        pool = "argmax" if eos_token_id == 2 else "eos"
        super().__init__([hf_block(layer) for layer in text.encoder.layers], pool, eos_token_id, causal=True)
        self.text, self.projection = text, projection

    def embed(self, batch: TextBatch) -> torch.Tensor:
        return self.text.embeddings(input_ids=batch.input_ids.to(self.text.embeddings.token_embedding.weight.device))

    def mask(self, batch, copies, t, dtype, device):
        return text_mask(batch.attention_mask.to(device).repeat_interleave(copies, 0), dtype, causal=True)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.text.final_layer_norm(pooled))

    def parts(self):
        t = self.text
        return present(self.projection, t.final_layer_norm), list(t.encoder.layers), [t.embeddings]


@dataclass
class HFCLIPBackend(TowersBackend):
    """A ``transformers.CLIPModel`` behind m2ib's backend interface.

    The split forward (``prefix`` then ``suffix``) reproduces ``get_image_features`` /
    ``get_text_features``: the same embeddings, layer norms, causal and padding masks,
    end-token pooling and projections.
    """

    def model_class(self) -> type[CLIPLayoutModel]:
        """The transformers class this backend reads (a hook: CLIP-layout families override it)."""
        from transformers import CLIPModel

        return CLIPModel

    def text_tower(self, model: CLIPLayoutModel) -> Tower:
        """The text tower with its pooling rule (a hook: CLIP-layout families override it)."""
        return HFCLIPTextTower(
            model.text_model, model.text_projection, sub_config(model.config.text_config, "text_config").eos_token_id
        )

    @property
    def clip_model(self) -> CLIPLayoutModel:
        """``model`` as the transformers class this backend reads (checked)."""
        model, expected = self.model, self.model_class()
        if not isinstance(model, expected):
            raise InputError(
                f"{type(self).__name__} needs a transformers {expected.__name__}, got {type(model).__name__}"
            )
        return model

    def build_towers(self) -> dict[Modality, Tower]:
        model = self.clip_model
        attn = getattr(model.config, "_attn_implementation", "eager") or "eager"
        if attn not in SUPPORTED_ATTENTION:
            raise InputError(
                f"attention implementation {attn!r} is not supported: load the model with "
                "attn_implementation='sdpa' or 'eager'"
            )
        if self.preprocessing is None:
            self.preprocessing = preprocessing_from(
                None, sub_config(model.config.vision_config, "vision_config").image_size
            )
        return {"image": HFCLIPImageTower(model.vision_model, model.visual_projection), "text": self.text_tower(model)}

    @property
    def context_length(self) -> int:
        return sub_config(self.clip_model.config.text_config, "text_config").max_position_embeddings

    @property
    def geometry(self) -> Geometry:  # the model's input size, whatever the processor crops to
        size = sub_config(self.clip_model.config.vision_config, "vision_config").image_size
        return dataclasses.replace(super().geometry, image_size=(size, size))

    # --- inputs --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image], sources: Sequence[str] = ()) -> ImageBatch:
        batch = super().preprocess_images(images, sources)
        if batch.pixel_values.shape[-2:] != self.geometry.image_size:
            raise InputError(
                f"the image processor crops to {tuple(batch.pixel_values.shape[-2:])} but the model "
                f"reads {self.geometry.image_size}: fix the processor's crop_size"
            )
        return batch

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        if self.tokenizer is None:
            raise InputError(
                f"model {self.name!r} has no tokenizer: pass tokenizer= (or a CLIPProcessor) to "
                "m2ib.load, or give input_ids"
            )
        limit = self.geometry.context_length
        enc = hf_encode(self.tokenizer, texts, limit, padding=True)
        return self.text_batch(enc["input_ids"], enc["attention_mask"], texts)

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        """A TextBatch from token ids (readable tokens and start/end positions filled in)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens, special, words = hf_readable(self.tokenizer, input_ids, attention_mask)
        if not texts and self.tokenizer is not None:
            texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in input_ids.tolist()]
        return TextBatch(
            input_ids.to(self.device), attention_mask.to(self.device), tuple(texts), tokens, special, words
        )


def _is_clip_model(model: torch.nn.Module) -> bool:
    from transformers import CLIPModel

    return isinstance(model, CLIPModel)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> HFCLIPBackend:
    from transformers import CLIPModel

    if not isinstance(model, CLIPModel):  # the family recognises CLIPModels only
        raise InputError(f"HFCLIPBackend needs a transformers CLIPModel, got {type(model).__name__}")
    size = sub_config(model.config.vision_config, "vision_config").image_size
    prep = preprocessing_from(processor, size) if processor is not None else None
    return HFCLIPBackend(
        model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer, preprocessing=prep
    )


# The hf: names and saved transformers directories are read here for every transformers family:
# the directory's model_type picks the family (SigLIP registers "siglip").
register(
    Family(
        name="transformers CLIP",
        supports="transformers CLIPModel",
        recognises=_is_clip_model,
        wrap=_wrap,
        prefix="hf:",
        load=load_hf,
        recognises_path=is_transformers_directory,
        load_path=load_directory,
        model_type="clip",
        model_class="CLIPModel",
    )
)
