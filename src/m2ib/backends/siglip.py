"""Backend for ``transformers`` ``SiglipModel`` checkpoints (SigLIP, sigmoid-trained towers).

What differs from CLIP, and what the split forward reproduces (``get_image_features`` /
``get_text_features``, tested to 1e-5):

- Image tower: no class token (``image_prefix_tokens = 0``, every token is a patch) and no
  pre-norm; the embedding is the attention-pooling head (a learned probe attends over all
  patches after ``post_layernorm``, then an MLP). Every token reaches it, so the last block
  always runs in full.
- Text tower: bidirectional (no causal mask). Texts are padded to the full context (64) with
  the pad token, as the model was trained, and the embedding is ``head`` of the *last position*
  (usually padding), so padding is never dropped. Attention does not mask the padding, as in
  training and as ``get_text_features(input_ids)`` (``padding_mask=True`` masks padding keys,
  as ``get_text_features(input_ids, attention_mask)`` does).
- ``TextBatch.attention_mask`` marks the real tokens (the end token included): maps and M2IB's
  bottleneck cover those. The padding positions the model pools from are not bottlenecked.
- Similarity: SigLIP's logits are ``cos(image, text) * exp(logit_scale) + logit_bias``, a
  monotone function of the cosine of the pooled embeddings, so M2IB's relevance term uses
  that cosine, as for CLIP (the sigmoid probability would only rescale it).

Real SigLIP tokenizers are SentencePiece models: ``pip install 'm2ib[siglip]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .base import ImageBatch, Modality, TextBatch
from .blocks import hf_block, text_mask
from .hf_loading import config_int, model_config, sub_config
from .hf_tokens import hf_encode, hf_readable
from .registry import Family, register
from .towers import PooledTextTower, Tower, TowersBackend, TransformerTower, present

if TYPE_CHECKING:  # transformers ships types
    from transformers import Siglip2TextModel, SiglipTextModel, SiglipVisionModel

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def siglip_preprocessing(processor: Any, image_size: int) -> ImagePreprocessing:
    """SigLIP's image processor: resize to the model's size (no crop), scale, normalise."""
    ip = getattr(processor, "image_processor", processor)
    size = dict(getattr(ip, "size", None) or {})
    height, width = int(size.get("height", image_size)), int(size.get("width", image_size))
    mean = tuple(getattr(ip, "image_mean", None) or SIGLIP_MEAN)
    std = tuple(getattr(ip, "image_std", None) or SIGLIP_STD)
    resample = getattr(ip, "resample", Image.Resampling.BICUBIC)
    resample = int(getattr(resample, "value", resample))
    return ImagePreprocessing(min(height, width), (height, width), mean, std, resample, resize_mode="squash")


class SiglipImageTower(TransformerTower):
    prefix_tokens = 0

    def __init__(self, vision: SiglipVisionModel):
        if getattr(vision, "head", None) is None:
            raise InputError("SigLIP image towers without the attention-pooling head are not supported")
        super().__init__([hf_block(layer) for layer in vision.encoder.layers])
        self.vision = vision
        grid = config_int(vision.config.image_size, "image_size") // config_int(vision.config.patch_size, "patch_size")
        self.patch_grid = (grid, grid)

    def grid(self, layer: int) -> tuple[int, int]:
        return self.patch_grid

    def embed(self, batch: ImageBatch) -> torch.Tensor:
        weight = self.vision.embeddings.patch_embedding.weight
        return self.vision.embeddings(batch.pixel_values.to(weight.device, weight.dtype))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:  # every token: the probe attends over all
        return self.vision.head(self.vision.post_layernorm(hidden))

    def parts(self):
        v = self.vision
        return present(v.post_layernorm, v.head), list(v.encoder.layers), [v.embeddings]


class SiglipTextTower(PooledTextTower):
    """Bidirectional; the head reads the last position, padding or not (texts fill the context)."""

    def __init__(self, text: SiglipTextModel | Siglip2TextModel, padding_mask: bool):
        super().__init__([hf_block(layer) for layer in text.encoder.layers], pool="last", causal=False)
        self.text, self.padding_mask = text, padding_mask

    def embed(self, batch: TextBatch) -> torch.Tensor:
        return self.text.embeddings(input_ids=batch.input_ids.to(self.text.embeddings.token_embedding.weight.device))

    def mask(self, batch, copies, t, dtype, device):
        if not self.padding_mask:
            return None
        return text_mask(batch.attention_mask.to(device).repeat_interleave(copies, 0), dtype, causal=False)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text.head(self.text.final_layer_norm(pooled))

    def parts(self):
        t = self.text
        return present(t.final_layer_norm, t.head), list(t.encoder.layers), [t.embeddings]


@dataclass
class SiglipBackend(TowersBackend):
    """A ``transformers.SiglipModel`` behind m2ib's backend interface (see the module docstring)."""

    padding_mask: bool = False  # mask padding keys in the text tower (off: as SigLIP was trained)

    def build_towers(self) -> dict[Modality, Tower]:
        from transformers import SiglipModel

        if not isinstance(self.model, SiglipModel):
            raise InputError(f"SiglipBackend needs a transformers SiglipModel, got {type(self.model).__name__}")
        if self.preprocessing is None:
            self.preprocessing = siglip_preprocessing(
                None, sub_config(self.model.config.vision_config, "vision_config").image_size
            )
        return {
            "image": SiglipImageTower(self.model.vision_model),
            "text": SiglipTextTower(self.model.text_model, self.padding_mask),
        }

    @property
    def context_length(self) -> int:
        return sub_config(model_config(self.model).text_config, "text_config").max_position_embeddings

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        if self.tokenizer is None:
            raise InputError(
                f"model {self.name!r} has no tokenizer: pass tokenizer= to m2ib.load ({SIGLIP.install_hint})"
            )
        enc = hf_encode(self.tokenizer, texts, self.context_length, padding="max_length")
        return self.text_batch(enc["input_ids"], enc["attention_mask"], texts)

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        limit = self.context_length
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
        if input_ids.shape[1] < limit:  # the model pools the last of its positions: pad as it was trained
            pad = getattr(self.tokenizer, "pad_token_id", None)
            pad = sub_config(model_config(self.model).text_config, "text_config").pad_token_id if pad is None else pad
            extra = torch.full((input_ids.shape[0], limit - input_ids.shape[1]), int(pad or 0), dtype=input_ids.dtype)
            input_ids = torch.cat([input_ids, extra], 1)
            attention_mask = torch.cat([attention_mask, torch.zeros_like(extra)], 1)
        tokens, special, words = hf_readable(self.tokenizer, input_ids, attention_mask)
        if not texts and self.tokenizer is not None:
            texts = [
                self.tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
                for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())
            ]
        return TextBatch(
            input_ids.to(self.device), attention_mask.to(self.device), tuple(texts), tokens, special, words
        )


def _is_siglip_model(model: torch.nn.Module) -> bool:
    from transformers import SiglipModel

    return isinstance(model, SiglipModel)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> SiglipBackend:
    size = sub_config(model_config(model).vision_config, "vision_config").image_size
    prep = siglip_preprocessing(processor, size) if processor is not None else None
    return SiglipBackend(
        model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer, preprocessing=prep
    )


# Loaded by hf: names and transformers directories whose config says model_type "siglip".
SIGLIP = register(
    Family(
        name="SigLIP",
        supports="transformers SiglipModel",
        recognises=_is_siglip_model,
        wrap=_wrap,
        model_type="siglip",
        model_class="SiglipModel",
        install_hint="pip install 'm2ib[siglip]' (SigLIP's SentencePiece tokenizer needs sentencepiece and protobuf)",
    )
)
