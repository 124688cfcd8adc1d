"""Backends: one adapter per model family, and ``load_backend`` that picks one."""

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
            id such as ``"openai/clip-vit-base-patch32"``, a local directory holding a saved
            CLIPModel, a ``transformers.CLIPModel`` or an existing :class:`Backend`.
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
                         "a directory or a transformers CLIPModel")
    model = backend.model
    if target_dtype is not None and next(model.parameters()).dtype != target_dtype:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    return backend


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> Backend:
    from transformers import CLIPModel

    if isinstance(model, CLIPModel):
        size = model.config.vision_config.image_size
        prep = preprocessing_from(processor, size) if processor is not None else None
        return HFCLIPBackend(model=model, name=name, recommended=info.get("recommended", {}),
                             tokenizer=tokenizer, preprocessing=prep)
    raise InputError(f"no m2ib backend for {type(model).__name__} yet: supported are transformers CLIPModel "
                     "checkpoints")


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
    path = Path(source).expanduser()
    if path.is_dir():
        return load_directory(path, name=source, processor=processor, tokenizer=tokenizer)
    if path.exists():
        raise InputError(f"{path}: is a file; pass the directory that holds config.json and the weights")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise InputError(f"{source}: no such model directory")
    return load_directory(_hub_snapshot(source), name=source, processor=processor, tokenizer=tokenizer)


def _hub_snapshot(repo_id: str) -> Path:
    """The local directory of a hub model: from the cache, else downloaded; fails fast offline."""
    from huggingface_hub import snapshot_download

    howto = (f"download it where there is internet (`hf download {repo_id} --local-dir DIR`) "
             f"and pass --model DIR, or fill the Hugging Face cache")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelNotAvailableError(f"model {repo_id!r} is not in the local cache and {why}: {howto}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:
        raise ModelNotAvailableError(f"could not download {repo_id!r} ({str(exc).splitlines()[0]}): "
                                     f"check the id, or {howto}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
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
    """Load a saved CLIPModel directory (config.json + weights, tokenizer and preprocessor files)."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    path = Path(path)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no config.json here; pass a directory saved with save_pretrained")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "clip":
        raise InputError(f"{path}: model_type {config.model_type!r} has no m2ib backend yet (supported: clip)")
    with warnings.catch_warnings(), _quiet_transformers():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model = CLIPModel.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception:
            tokenizer = getattr(processor, "tokenizer", None)
    if processor is None and (path / "preprocessor_config.json").exists():
        processor = SimpleNamespace(**json.loads((path / "preprocessor_config.json").read_text()))
    info = {}
    if (path / "m2ib.json").exists():
        info = json.loads((path / "m2ib.json").read_text())
    return _wrap(model, name or str(path), tokenizer, processor, info)
