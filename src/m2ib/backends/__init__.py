"""Backends: one adapter per model family, and ``load_backend`` that picks one.

Names: ``hf:ID_OR_DIR`` (transformers CLIPModel / SiglipModel; a bare hub id or directory with
config.json means the same), ``open_clip:SPEC`` (:mod:`.openclip`), ``clip:SPEC``
(:mod:`.openai_clip`); a directory with open_clip_config.json is OpenCLIP's, a file is an
OpenAI clip checkpoint. A model object is dispatched by its type.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import InputError, ModelNotAvailableError
from .base import EMBEDDINGS, MODALITIES, AttentionRecord, Backend, Batch, Geometry, ImageBatch, Modality, TextBatch
from .hf_clip import HFCLIPBackend, preprocessing_from

__all__ = ["AttentionRecord", "EMBEDDINGS", "Backend", "Batch", "Geometry", "ImageBatch", "TextBatch", "Modality", "MODALITIES",
           "HFCLIPBackend", "load_backend"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "model":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InputError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)} or 'model'") from None


def load_backend(source: Any, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "float32", processor: Any = None,
                 tokenizer: Any = None) -> Backend:
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
        backend = _load_named(str(source), processor=processor, tokenizer=tokenizer)
    else:
        raise InputError(f"cannot load a model from {type(source).__name__}: pass a name, a hub id, "
                         "a directory or a model object (transformers CLIPModel/SiglipModel, open_clip or clip CLIP)")
    model = backend.model
    if target_dtype is not None and next(model.parameters()).dtype != target_dtype:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    return backend


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> Backend:
    """The backend for a model object, by its type (optional libraries are imported only when needed)."""
    from transformers import CLIPModel, SiglipModel

    modules = {c.__module__ or "" for c in type(model).__mro__}
    recommended = info.get("recommended", {})
    if isinstance(model, CLIPModel):
        size = model.config.vision_config.image_size
        prep = preprocessing_from(processor, size) if processor is not None else None
        return HFCLIPBackend(model=model, name=name, recommended=recommended, tokenizer=tokenizer,
                             preprocessing=prep)
    if isinstance(model, SiglipModel):
        from .siglip import SiglipBackend, siglip_preprocessing

        size = model.config.vision_config.image_size
        prep = siglip_preprocessing(processor, size) if processor is not None else None
        return SiglipBackend(model=model, name=name, recommended=recommended, tokenizer=tokenizer,
                             preprocessing=prep)
    if any(m.startswith("open_clip.") for m in modules):
        from .openclip import OpenCLIPBackend, import_open_clip

        oc = import_open_clip()
        if tokenizer is None:
            tokenizer = oc.get_tokenizer("ViT-B-32")  # CLIP's BPE; pass tokenizer= for other vocabularies
        return OpenCLIPBackend(model=model, name=name, recommended=recommended, tokenizer=tokenizer)
    if "clip.model" in modules:
        from .openai_clip import OpenAICLIPBackend

        return OpenAICLIPBackend(model=model, name=name, recommended=recommended, tokenizer=tokenizer)
    raise InputError(f"no m2ib backend for {type(model).__name__}: supported are transformers CLIPModel and "
                     "SiglipModel, open_clip CLIP/CustomTextCLIP and OpenAI clip CLIP models")


FAMILY_PREFIXES = ("hf:", "open_clip:", "clip:")


def _load_named(source: str, processor: Any = None, tokenizer: Any = None) -> Backend:
    from ..models import BUILTIN_MODELS

    if source in BUILTIN_MODELS:
        model, tok, prep, info = BUILTIN_MODELS[source].build()
        if isinstance(model, Backend):
            return model
        backend = _wrap(model, source, tokenizer or tok, processor, info)
        if prep is not None:
            backend.preprocessing = prep
        return backend
    if source.startswith("open_clip:"):
        from .openclip import load_open_clip

        return load_open_clip(source[len("open_clip:"):])
    if source.startswith("clip:"):
        from .openai_clip import load_openai_clip

        return load_openai_clip(source[len("clip:"):])
    name = source
    if source.startswith("hf:"):
        source = source[len("hf:"):]
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "open_clip_config.json").exists():
            from .openclip import load_open_clip_dir

            return load_open_clip_dir(path, name)
        return load_directory(path, name=name, processor=processor, tokenizer=tokenizer)
    if path.exists():
        if name.startswith("hf:"):
            raise InputError(f"{path}: is a file; pass the directory that holds config.json and the weights")
        from .openai_clip import load_openai_clip  # a checkpoint file: OpenAI clip's layout

        return load_openai_clip(str(path))
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise InputError(f"{source}: no such model directory")
    return load_directory(_hub_snapshot(source), name=name, processor=processor, tokenizer=tokenizer)


def _hub_snapshot(repo_id: str, patterns: list[str] | None = None, howto: str | None = None) -> Path:
    """The local directory of a hub model: from the cache, else downloaded; fails fast offline."""
    from huggingface_hub import snapshot_download

    patterns = HUB_FILES if patterns is None else patterns
    howto = howto or (f"download it where there is internet (`hf download {repo_id} --local-dir DIR`) "
                      f"and pass --model DIR, or fill the Hugging Face cache")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelNotAvailableError(f"model {repo_id!r} is not in the local cache and {why}: {howto}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotAvailableError(f"could not download {repo_id!r} ({str(exc).splitlines()[0]}): "
                                     f"check the id, or {howto}") from None


def _hub_reachable(timeout: float = 3.0, url: str | None = None) -> bool:
    """Whether the Hugging Face hub (or ``url``'s host) answers a TCP connection within ``timeout``."""
    endpoint = urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_transformers():
    """No 'Loading weights' bar from transformers while we load; its setting is restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_directory(path: Path, name: str | None = None, processor: Any = None, tokenizer: Any = None) -> Backend:
    """Load a saved CLIPModel or SiglipModel directory (config.json + weights, tokenizer and
    preprocessor files)."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    path = Path(path)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no config.json here; pass a directory saved with save_pretrained")
    config = AutoConfig.from_pretrained(path)
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if config.model_type not in classes:
        raise InputError(f"{path}: model_type {config.model_type!r} has no m2ib backend yet "
                         f"(supported: {', '.join(classes)}; OpenCLIP and OpenAI clip by open_clip: / clip: names)")
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model = classes[config.model_type].from_pretrained(path, attn_implementation="sdpa",
                                                           dtype=torch.float32).eval()
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is None and config.model_type == "siglip" and _needs_sentencepiece(exc):
                from .siglip import EXTRA_HINT

                raise InputError(f"{path}: SigLIP's tokenizer cannot be loaded ({str(exc).splitlines()[0]}): "
                                 f"{EXTRA_HINT}") from None
    if processor is None and (path / "preprocessor_config.json").exists():
        processor = SimpleNamespace(**json.loads((path / "preprocessor_config.json").read_text()))
    info = {}
    if (path / "m2ib.json").exists():
        info = json.loads((path / "m2ib.json").read_text())
    return _wrap(model, name or str(path), tokenizer, processor, info)


def _needs_sentencepiece(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("sentencepiece", "protobuf", "requires the"))
