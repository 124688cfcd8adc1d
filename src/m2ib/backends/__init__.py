"""Backends: one adapter per model family, and ``load_backend`` that picks one.

Families are data (:mod:`.registry`): each family file registers how its models are recognised
(by object, by name prefix, by path) and wrapped. Names: ``hf:ID_OR_DIR`` (transformers
CLIPModel / SiglipModel; a bare hub id or a directory with config.json means the same),
``open_clip:SPEC`` (:mod:`.openclip`), ``clip:SPEC`` (:mod:`.openai_clip`); a directory with
open_clip_config.json is OpenCLIP's, a file is an OpenAI clip checkpoint.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from ..collector import gc_paused
from ..errors import InputError

# Importing a family file registers its family (its optional library is imported only when one of
# its models is loaded); families recognise disjoint objects, names and paths, so order is moot.
from . import hf_clip, metaclip2, openai_clip, openclip, openclip_hf_text, registry, siglip, siglip2  # noqa: F401
from .base import EMBEDDINGS, MODALITIES, AttentionRecord, Backend, Batch, Geometry, ImageBatch, Modality, TextBatch
from .hf_clip import HFCLIPBackend
from .hf_loading import load_directory
from .registry import Family, Load
from .towers import TowersBackend

__all__ = [
    "AttentionRecord",
    "EMBEDDINGS",
    "Backend",
    "Batch",
    "Geometry",
    "ImageBatch",
    "TextBatch",
    "Modality",
    "MODALITIES",
    "HFCLIPBackend",
    "load_backend",
    "load_directory",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
DEFAULT_PREFIX = "hf:"  # a name no family claims is a transformers name (hub id or directory)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "model":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InputError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)} or 'model'") from None


def load_backend(
    source: Any,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    processor: Any = None,
    tokenizer: Any = None,
) -> Backend:
    """A backend for ``source``: a built-in name, a hub id, a local directory or a model object.

    Args:
        source: ``"shapes"`` / ``"random-tiny"`` (see ``m2ib.list_models()``), a Hugging Face hub
            id such as ``"openai/clip-vit-base-patch32"`` (or ``"hf:..."``), a local directory
            holding a saved CLIPModel or SiglipModel, ``"open_clip:ARCH@TAG"`` /
            ``"open_clip:hf-hub:ORG/REPO"``, ``"clip:ViT-B/32"`` / ``"clip:FILE.pt"``, a model object
            (transformers CLIPModel or SiglipModel, open_clip CLIP, OpenAI clip CLIP) or an
            existing :class:`Backend`.
        device: where to run; ``None`` keeps the model where it is (CPU for loaded models).
        dtype: weights' precision for the attribution; ``"float32"`` by default (half-precision
            checkpoints are upcast); ``"model"`` or ``None`` keeps the model's own.
        processor: a ``CLIPProcessor`` (or image processor) for a model object.
        tokenizer: a tokenizer for a model object (else the processor's).

    A model object given by the user is never changed: when another device or dtype is
    needed, m2ib works on a copy.
    """
    if isinstance(source, Backend):
        return source
    target_dtype = _resolve_dtype(dtype)
    if isinstance(source, torch.nn.Module):
        model = source
        needs_device = device is not None and torch.device(device) != next(model.parameters()).device
        needs_dtype = target_dtype is not None and next(model.parameters()).dtype != target_dtype
        if needs_device or needs_dtype:
            model = copy.deepcopy(model)  # never move or cast the caller's model in place
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        tok = tokenizer or getattr(processor, "tokenizer", None)
        backend = _wrap(model, name, tok, processor, {})
    elif isinstance(source, (str, os.PathLike)):
        with gc_paused():  # imports and modules that live on: no full collection walks them meanwhile
            backend = _load_named(str(source), processor=processor, tokenizer=tokenizer)
    else:
        raise InputError(
            f"cannot load a model from {type(source).__name__}: pass a name, a hub id, "
            "a directory or a model object (transformers CLIPModel/SiglipModel, open_clip or clip CLIP)"
        )
    model = backend.model
    if target_dtype is not None and next(model.parameters()).dtype != target_dtype:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    return backend


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> Backend:
    """The backend for a model object: its family's (optional libraries are imported only when needed)."""
    family = registry.family_of_model(model)
    if family is None:
        raise InputError(
            f"no m2ib backend for {type(model).__name__}: supported are {registry.supported_objects()} models"
        )
    return family.wrap(model, name, tokenizer, processor, info)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def _load_named(source: str, processor: Any = None, tokenizer: Any = None) -> Backend:
    """A built-in name, ``PREFIX:SPEC`` of a family, an existing file or directory in a family's
    format, or else a transformers name (``hf:``: a hub id)."""
    from ..models import BUILTIN_MODELS, generative_refusal

    if source in BUILTIN_MODELS:
        if BUILTIN_MODELS[source].generative:
            raise InputError(generative_refusal(source))
        return _load_builtin(BUILTIN_MODELS[source], processor, tokenizer)
    family = registry.family_of_name(source)
    if family is not None and family.prefix is not None:  # family_of_name only returns prefixed families
        return _loader(family, family.load)(
            source[len(family.prefix) :], name=source, processor=processor, tokenizer=tokenizer
        )
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(
            f"--model {source}: is an image, not a model; give the image as IMAGE and --model a "
            "built-in name, a hub id, a model directory or a checkpoint file"
        )
    family = registry.family_of_path(path) if path.exists() else None
    if family is not None:
        return _loader(family, family.load_path)(path, name=source, processor=processor, tokenizer=tokenizer)
    default = registry.family_with_prefix(DEFAULT_PREFIX)
    return _loader(default, default.load)(source, name=source, processor=processor, tokenizer=tokenizer)


def _loader(family: Family, load: Load | None) -> Load:
    """A family's load function that the registry lookup promised (None here is a bug in the registry)."""
    if load is None:
        raise RuntimeError(f"model family {family.name!r} was found by a lookup that needs a load function it lacks")
    return load


def _load_builtin(entry: Any, processor: Any, tokenizer: Any) -> Backend:
    """A built-in model: a saved directory in the package, or a model built in code."""
    if entry.directory is not None:  # as its directory would load, under the built-in name
        path = entry.saved_directory()
        family = registry.family_of_path(path)
        if family is None:
            raise InputError(f"built-in model {entry.name!r}: no model family reads {path}")
        return _loader(family, family.load_path)(path, name=entry.name, processor=None, tokenizer=None)
    model, tok, prep, info = entry.build()
    backend = _wrap(model, entry.name, tokenizer or tok, processor, info)
    if prep is not None:
        if not isinstance(backend, TowersBackend):
            raise RuntimeError(f"built-in model {entry.name!r} gives image preprocessing its backend cannot take")
        backend.preprocessing = prep
    return backend
