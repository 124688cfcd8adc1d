"""Backend for ``transformers`` ``CLIPModel`` checkpoints (OpenAI CLIP, fine-tunes, our shapes model)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..inputs import ImagePreprocessing
from .base import AttentionRecord, Backend, Batch, Geometry, ImageBatch, Modality, TextBatch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SUPPORTED_ATTENTION = ("eager", "sdpa")


def readable_token(token: str) -> str:
    """'cat</w>' -> 'cat'; byte-level symbols decoded; special tokens kept as they are."""
    if token.startswith("<|") and token.endswith("|>"):
        return token
    return token.replace("</w>", "")


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


@dataclass
class HFCLIPBackend(Backend):
    """A ``transformers.CLIPModel`` behind m2ib's backend interface.

    The split forward (``prefix`` then ``suffix``) reproduces ``get_image_features`` /
    ``get_text_features``: the same embeddings, layer norms, causal and padding masks,
    end-token pooling and projections.
    """

    tokenizer: Any = None  # a transformers CLIP tokenizer
    preprocessing: ImagePreprocessing | None = None
    _layer_takes_causal_mask: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        from transformers import CLIPModel

        if not isinstance(self.model, CLIPModel):
            raise InputError(f"HFCLIPBackend needs a transformers CLIPModel, got {type(self.model).__name__}")
        attn = getattr(self.model.config, "_attn_implementation", "eager") or "eager"
        if attn not in SUPPORTED_ATTENTION:
            raise InputError(f"attention implementation {attn!r} is not supported: load the model with "
                             "attn_implementation='sdpa' or 'eager'")
        if self.preprocessing is None:
            self.preprocessing = preprocessing_from(None, self.model.config.vision_config.image_size)
        layer = self.model.vision_model.encoder.layers[0]
        # transformers < 5 encoder layers take a separate causal mask and return tuples.
        self._layer_takes_causal_mask = "causal_attention_mask" in inspect.signature(layer.forward).parameters

    # --- geometry ------------------------------------------------------------------------
    @property
    def geometry(self) -> Geometry:
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        grid = vc.image_size // vc.patch_size
        return Geometry(
            image_size=(vc.image_size, vc.image_size),
            patch_grid=(grid, grid),
            image_prefix_tokens=1,
            vision_layers=vc.num_hidden_layers,
            text_layers=tc.num_hidden_layers,
            context_length=tc.max_position_embeddings,
        )

    # --- inputs --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image], sources: Sequence[str] = ()) -> ImageBatch:
        pixels, display = self.preprocessing(images)
        if pixels.shape[-2:] != self.geometry.image_size:
            raise InputError(f"the image processor crops to {tuple(pixels.shape[-2:])} but the model reads "
                             f"{self.geometry.image_size}: fix the processor's crop_size")
        return ImageBatch(pixels.to(self.device), display, tuple(sources))

    def display_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocessing.mean, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=pixel_values.device).view(1, 3, 1, 1)
        return (pixel_values.float() * std + mean).clamp(0.0, 1.0)

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        if self.tokenizer is None:
            raise InputError(f"model {self.name!r} has no tokenizer: pass tokenizer= (or a CLIPProcessor) to "
                             "m2ib.load, or give input_ids")
        limit = self.geometry.context_length
        full = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        for text, ids in zip(texts, full):
            if len(ids) > limit:
                warnings.warn(f"text {_short(text)!r} has {len(ids)} tokens but the model reads {limit}: "
                              f"the last {len(ids) - limit} tokens were dropped", stacklevel=3)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return self.text_batch(enc["input_ids"], enc["attention_mask"], texts)

    def text_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   texts: Sequence[str] = ()) -> TextBatch:
        """A TextBatch from token ids (readable tokens and start/end positions filled in)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens, special = [], []
        specials = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            ids = [i for i, m in zip(ids, mask) if m]
            if self.tokenizer is not None:
                tokens.append(tuple(readable_token(t) for t in self.tokenizer.convert_ids_to_tokens(ids)))
            else:
                tokens.append(tuple(str(i) for i in ids))
            special.append(tuple(j for j, i in enumerate(ids) if i in specials))
        if not texts and self.tokenizer is not None:
            texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in input_ids.tolist()]
        return TextBatch(input_ids.to(self.device), attention_mask.to(self.device), tuple(texts),
                         tuple(tokens), tuple(special))

    # --- the split forward ---------------------------------------------------------------
    def _run_layers(self, modality: Modality, hidden: torch.Tensor, start: int, stop: int,
                    batch: Batch, copies: int) -> torch.Tensor:
        tower = self.model.vision_model if modality == "image" else self.model.text_model
        layers = tower.encoder.layers[start:stop]
        if len(layers) == 0:
            return hidden
        mask = None
        if modality == "text":
            mask = _text_mask(batch.attention_mask.repeat_interleave(copies, 0), hidden.dtype)
        records = self._recording.get(modality)
        for layer in layers:
            if records is not None:
                hidden = _recorded_block(layer, hidden, mask, records)
                continue
            if self._layer_takes_causal_mask:
                out = layer(hidden, mask, None)
            else:
                out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @property
    def supports_attention(self) -> bool:
        return True

    def prefix(self, modality: Modality, batch: Batch, layer: int) -> torch.Tensor:
        if modality == "image":
            vm = self.model.vision_model
            pixels = batch.pixel_values.to(self.device, self.dtype)
            hidden = vm.pre_layrnorm(vm.embeddings(pixels))
        else:
            hidden = self.model.text_model.embeddings(input_ids=batch.input_ids.to(self.device))
        return self._run_layers(modality, hidden, 0, layer + 1, batch, 1)

    def suffix(self, modality: Modality, hidden: torch.Tensor, layer: int, batch: Batch) -> torch.Tensor:
        copies = hidden.shape[0] // len(batch)
        if copies * len(batch) != hidden.shape[0]:
            raise ValueError(f"hidden has {hidden.shape[0]} rows, not a multiple of the batch's {len(batch)}")
        last = self.num_layers(modality) - 1
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if modality == "image":
            positions = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)  # CLS
        else:
            positions = self.pool_positions(batch).repeat_interleave(copies, 0)
        if modality in self._recording:  # every block in full, so that all of it is recorded
            hidden = self._run_layers(modality, hidden, layer + 1, last + 1, batch, copies)
            pooled = hidden[rows, positions]
        elif layer < last:
            # Blocks before the last run on every token; the last block only for the pooled one.
            hidden = self._run_layers(modality, hidden, layer + 1, last, batch, copies)
            pooled = self._last_block_at(modality, hidden, positions, batch, copies)
        else:
            pooled = hidden[rows, positions]
        if modality == "image":
            return self.model.visual_projection(self.model.vision_model.post_layernorm(pooled))
        return self.model.text_projection(self.model.text_model.final_layer_norm(pooled))

    def _last_block_at(self, modality: Modality, hidden: torch.Tensor, positions: torch.Tensor,
                       batch: Batch, copies: int) -> torch.Tensor:
        """The last encoder block's output at one position per row: [N, width].

        Only the pooled token (CLS / end of text) of the last block reaches the embedding,
        so its query, attention output and MLP are computed for that token alone; keys and
        values still come from every token. Same numbers as the full block, about a sixth
        of its work.
        """
        tower = self.model.vision_model if modality == "image" else self.model.text_model
        block = tower.encoder.layers[-1]
        attn = block.self_attn
        n, t, width = hidden.shape
        heads = attn.num_heads
        rows = torch.arange(n, device=hidden.device)
        residual = hidden[rows, positions]  # [N, width]
        normed = block.layer_norm1(hidden)
        query = attn.q_proj(normed[rows, positions]).view(n, heads, 1, -1)
        key = attn.k_proj(normed).view(n, t, heads, -1).transpose(1, 2)
        value = attn.v_proj(normed).view(n, t, heads, -1).transpose(1, 2)
        mask = None
        if modality == "text":  # the pooled query sees the real tokens up to itself
            keys = torch.arange(t, device=hidden.device)
            allowed = (keys[None, :] <= positions[:, None]) & batch.attention_mask.repeat_interleave(
                copies, 0).bool()
            mask = allowed[:, None, None, :]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)
        out = attn.out_proj(out.reshape(n, width))
        hidden = residual + out
        return hidden + block.mlp(block.layer_norm2(hidden))

    def pooled_positions(self, modality: Modality, batch: Batch) -> torch.Tensor:
        if modality == "image":
            return torch.zeros(len(batch), dtype=torch.long, device=self.device)  # CLS
        return self.pool_positions(batch).to(self.device)

    def pool_positions(self, batch: TextBatch) -> torch.Tensor:
        """Index of the end-of-text token whose state CLIP pools, as transformers does."""
        ids = batch.input_ids
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: the end token has the largest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)


def _recorded_block(block: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
                    records: list[AttentionRecord]) -> torch.Tensor:
    """A CLIP encoder block written out, keeping its attention (same numbers as the block)."""
    attn = block.self_attn
    n, t, width = hidden.shape
    heads = attn.num_heads
    normed = block.layer_norm1(hidden)
    query = attn.q_proj(normed).view(n, t, heads, -1).transpose(1, 2)
    key = attn.k_proj(normed).view(n, t, heads, -1).transpose(1, 2)
    value = attn.v_proj(normed).view(n, t, heads, -1).transpose(1, 2)
    scores = (query @ key.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    output = attn.out_proj((probs @ value).transpose(1, 2).reshape(n, t, width))
    record = AttentionRecord(probs, query, key, value, output)
    records.append(record)
    hidden = hidden + output
    hidden = hidden + block.mlp(block.layer_norm2(hidden))
    record.hidden = hidden
    return hidden


def _text_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [N, 1, T, T] mask: causal, and padding keys hidden."""
    n, t = attention_mask.shape
    device = attention_mask.device
    allowed = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    allowed = allowed[None, None] & attention_mask.bool()[:, None, None, :]
    # A padded query row still sees the real tokens before it, so no row is fully masked.
    mask = torch.zeros(n, 1, t, t, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
