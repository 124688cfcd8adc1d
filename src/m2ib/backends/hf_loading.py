"""Loading ``transformers`` models by name: hub ids and directories saved with ``save_pretrained``.

The directory's ``config.json`` says its ``model_type``; the family registered for that type
(:mod:`.registry`) names the class that loads it and wraps the model.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from . import hub, registry
from .base import Backend

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def load_hf(spec: str, *, name: str, processor: Any = None, tokenizer: Any = None) -> Backend:
    """A transformers model: ``spec`` is a local directory or a hub id (cached, else downloaded)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_directory(path, name=name, processor=processor, tokenizer=tokenizer)
    if path.exists():
        raise InputError(f"{path}: is a file; pass the directory that holds config.json and the weights")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise InputError(f"{spec}: no such model directory")
    return load_directory(hub.hub_snapshot(spec), name=name, processor=processor, tokenizer=tokenizer)


def is_transformers_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def load_directory(path: Path, name: str | None = None, processor: Any = None, tokenizer: Any = None) -> Backend:
    """Load a saved transformers model directory (config.json + weights, tokenizer and
    preprocessor files, optionally m2ib.json with recommended settings)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise InputError(f"{path}: no config.json here; pass a directory saved with save_pretrained")
    config = AutoConfig.from_pretrained(path)
    family = registry.family_of_model_type(config.model_type)
    if family is None:
        raise InputError(
            f"{path}: model_type {config.model_type!r} has no m2ib backend yet "
            f"(supported: {', '.join(registry.model_types())}; OpenCLIP and OpenAI clip by "
            "open_clip: / clip: names)"
        )
    if family.model_class is None:  # a family with a model_type names its class: None is a bug in the family
        raise RuntimeError(f"model family {family.name!r} reads model_type {config.model_type!r} but names no class")
    with warnings.catch_warnings(), quiet_transformers():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model = (
            getattr(transformers, family.model_class)
            .from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
            .eval()
        )
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is None and family.install_hint and _needs_sentencepiece(exc):
                raise InputError(
                    f"{path}: {family.name}'s tokenizer cannot be loaded ({str(exc).splitlines()[0]}): "
                    f"{family.install_hint}"
                ) from None
    if processor is None and (path / "preprocessor_config.json").exists():
        processor = SimpleNamespace(**json.loads((path / "preprocessor_config.json").read_text()))
    return family.wrap(model, name or str(path), tokenizer, processor, registry.saved_info(path))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No 'Loading weights' bar from transformers while we load; its setting is restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _needs_sentencepiece(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("sentencepiece", "protobuf", "requires the"))


def sub_config(config: dict | PretrainedConfig | None, name: str) -> PretrainedConfig:
    """A composite config's ``name`` sub-config (transformers types it as the dict or None it may be built
    from; a loaded model's is a config)."""
    from transformers import PretrainedConfig

    if not isinstance(config, PretrainedConfig):
        raise InputError(f"the model's {name} is a {type(config).__name__}, not a transformers config")
    return config


def model_config(model: torch.nn.Module) -> PretrainedConfig:
    """A transformers model's config."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise InputError(f"{type(model).__name__} is not a transformers model: it has no config to read")
    return model.config


def config_int(value: int | list[int] | tuple[int, int] | None, name: str) -> int:
    """A config size the towers read as one integer (transformers types it as a list or None too)."""
    if not isinstance(value, int):
        raise InputError(f"config {name} {value!r} is not supported (a single integer is)")
    return value
