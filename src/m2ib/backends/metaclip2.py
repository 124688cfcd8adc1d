"""Backend for ``transformers`` ``MetaClip2Model`` (MetaCLIP 2, the worldwide multilingual CLIPs).

``MetaClip2Model`` is not a ``CLIPModel`` subclass, but its towers are CLIP's module for module
(``pre_layrnorm``, the same encoder layers, ``post_layernorm``, ``visual_projection`` /
``text_projection``), so it runs on the transformers CLIP towers. One rule differs: the text head
always reads the *first* ``eos_token_id`` (CLIP's legacy configs with ``eos_token_id == 2`` read
the largest id instead; MetaCLIP 2's released weights have ``eos_token_id == 2`` and still read
the first end token). Tokenising is CLIP's (its XLM-V tokenizer through ``AutoTokenizer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .hf_clip import HFCLIPBackend, HFCLIPTextTower, preprocessing_from
from .hf_loading import sub_config
from .registry import Family, register
from .towers import Tower

if TYPE_CHECKING:  # transformers ships types
    from transformers import MetaClip2Model, MetaClip2TextModel

    from .hf_clip import CLIPLayoutModel


class MetaClip2TextTower(HFCLIPTextTower):
    """CLIP's causal text tower; the head reads the first ``eos_token_id``, whatever its value."""

    def __init__(self, text: MetaClip2TextModel, projection: torch.nn.Linear, eos_token_id: int):
        super().__init__(text, projection, eos_token_id)
        self.pool = "eos"


@dataclass
class MetaClip2Backend(HFCLIPBackend):
    """A ``transformers.MetaClip2Model`` behind m2ib's backend interface."""

    def model_class(self) -> type[MetaClip2Model]:
        from transformers import MetaClip2Model

        return MetaClip2Model

    def text_tower(self, model: CLIPLayoutModel) -> Tower:
        return MetaClip2TextTower(model.text_model, model.text_projection, model.text_model.eos_token_id)


def _is_metaclip2_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import MetaClip2Model
    except ImportError:  # an older transformers: no MetaCLIP 2 model can exist
        return False
    return isinstance(model, MetaClip2Model)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> MetaClip2Backend:
    from transformers import MetaClip2Model

    if not isinstance(model, MetaClip2Model):  # the family recognises MetaClip2Models only
        raise InputError(f"MetaClip2Backend needs a transformers MetaClip2Model, got {type(model).__name__}")
    size = sub_config(model.config.vision_config, "vision_config").image_size
    prep = preprocessing_from(processor, size) if processor is not None else None
    return MetaClip2Backend(
        model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer, preprocessing=prep
    )


# Loaded by hf: names and transformers directories whose config says model_type "metaclip_2".
register(
    Family(
        name="MetaCLIP 2",
        supports="transformers MetaClip2Model",
        recognises=_is_metaclip2_model,
        wrap=_wrap,
        model_type="metaclip_2",
        model_class="MetaClip2Model",
    )
)
