"""Backend for OpenAI's ``clip`` package (PyPI ``openai-clip``): its ViT and ResNet models, and
state dicts fine-tuned from them.

Names (after the ``clip:`` prefix of :func:`m2ib.load`), OpenAI's own scheme:

- ``ViT-B/32``, ``ViT-L/14@336px``, ``RN50``, ... (``clip.available_models()``): OpenAI's weights,
  from ``~/.cache/clip`` (where ``clip.load`` keeps them), else downloaded; offline it fails
  fast, saying how to get them.
- ``NAME@random``: that architecture with random weights, offline (smoke tests).
- ``FILE``: a JIT archive as OpenAI ships them, or a state dict (``torch.save(model.state_dict())``,
  also inside a ``{"state_dict": ...}`` checkpoint, ``module.`` prefixes stripped): the
  architecture is read from the shapes, as ``clip.model.build_model`` does.

The split forward reproduces ``encode_image`` / ``encode_text``: the causal mask, the
end-of-text token (``argmax`` of the ids: it has the largest id) and one ``text_projection``.
(The public M2IB reference's wrapper applied the projection twice, pooled the last position
and dropped the causal mask; the parity tests catch each of these.) Preprocessing is
``clip.load``'s: bicubic resize of the shorter side, centre crop, OpenAI's mean and std.

The package imports ``pkg_resources``, which setuptools >= 81 no longer ships; only for its
import, a stand-in that provides ``pkg_resources.packaging`` is put in place (and removed after).
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import InputError, ModelNotAvailableError
from ..inputs import ImagePreprocessing
from .base import Modality
from .openai_towers import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, OpenAITextTower
from .openclip import OpenCLIPBackend
from .openclip_visual import image_tower
from .registry import Family, module_names, register
from .towers import Tower

# OpenAI's released architectures: embed_dim, image size, vision layers, vision width, patch size,
# text width, text layers (context 77, vocabulary 49408, text heads = width / 64).
ARCHITECTURES: dict[str, tuple] = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 640, 12),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 768, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 1024, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
}


def import_clip():
    """OpenAI's ``clip`` package, or a one-line error naming the install to run."""
    shim = None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81: give clip the one thing it takes from there
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging
        sys.modules["pkg_resources"] = shim
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import clip
            import clip.model  # noqa: F401
    except ImportError as exc:
        missing = getattr(exc, "name", "") or ""
        if missing == "clip" or missing.startswith("clip."):
            raise InputError(f"OpenAI clip models need the clip package: {OPENAI_CLIP.install_hint}") from None
        raise InputError(f"clip failed to import ({str(exc).splitlines()[0]}): {OPENAI_CLIP.install_hint}") from None
    except (RuntimeError, OSError, AttributeError) as exc:  # e.g. torchvision built for another torch
        raise InputError(f"clip failed to import ({str(exc).splitlines()[0]}): {OPENAI_CLIP.install_hint}") from None
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    if not hasattr(clip, "load") or not hasattr(clip.model, "build_model"):
        raise InputError(f"the installed `clip` module is not OpenAI's CLIP package: {OPENAI_CLIP.install_hint}")
    return clip


@dataclass
class OpenAICLIPBackend(OpenCLIPBackend):
    """A ``clip.model.CLIP`` (ViT or ModifiedResNet image tower) behind m2ib's backend interface."""

    def build_towers(self) -> dict[Modality, Tower]:
        model: Any = self.model  # a clip.model.CLIP: OpenAI clip ships no types
        if self.tokenizer is None:
            self.tokenizer = import_clip().simple_tokenizer.SimpleTokenizer()
        if self.preprocessing is None:
            size = model.visual.input_resolution
            self.preprocessing = ImagePreprocessing(
                size,
                (size, size),
                OPENAI_CLIP_MEAN,
                OPENAI_CLIP_STD,
                int(Image.Resampling.BICUBIC),
                crop_rounding="round",
            )
        return {"image": image_tower(model.visual), "text": OpenAITextTower(model, causal=True, pool="argmax")}

    def _library_ids(self, texts: list[str], context: int) -> torch.Tensor:
        """As ``clip.tokenize(texts, context, truncate=True)``: start, BPE, end; cut keeping the end."""
        sot, eot = self._special_ids()
        out = torch.zeros(len(texts), context, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [sot, *self.tokenizer.encode(text), eot]
            if len(ids) > context:
                ids = ids[:context]
                ids[-1] = eot
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def load_openai_clip(spec: str) -> OpenAICLIPBackend:
    """An OpenAI clip model by OpenAI's names, ``NAME@random``, or a local file (module docstring)."""
    name = f"clip:{spec}"
    path = Path(spec).expanduser()
    if path.is_file():
        return OpenAICLIPBackend(model=build_from_file(path), name=name)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; the clip family loads a .pt file (JIT archive or state dict)")
    arch, tag = spec, ""
    if spec not in ARCHITECTURES and "@" in spec:
        arch, _, tag = spec.rpartition("@")
    if arch not in ARCHITECTURES:
        if spec.startswith((".", "/", "~")) or spec.endswith((".pt", ".pth", ".bin")):
            raise InputError(f"{spec}: no such file")
        raise InputError(
            f"clip has no model {arch!r}: use one of {', '.join(ARCHITECTURES)} (e.g. clip:ViT-B/32), "
            "NAME@random, or a .pt file"
        )
    if tag == "random":
        return OpenAICLIPBackend(model=random_model(arch), name=name)
    if tag:
        raise InputError(
            f"clip:{spec}: the clip family knows only @random after a name; for weights of your own "
            "pass the .pt file (clip:PATH)"
        )
    return OpenAICLIPBackend(model=build_from_file(_openai_file(arch)), name=name)


def random_model(arch: str) -> torch.nn.Module:
    """OpenAI clip's ``CLIP`` of architecture ``arch`` with random weights (float32)."""
    clip = import_clip()
    embed, size, vision_layers, vision_width, patch, text_width, text_layers = ARCHITECTURES[arch]
    return (
        clip.model.CLIP(
            embed, size, vision_layers, vision_width, patch, 77, 49408, text_width, text_width // 64, text_layers
        )
        .float()
        .eval()
    )


def build_from_file(path: str | os.PathLike) -> torch.nn.Module:
    """A JIT archive or a (fine-tuned) state dict in OpenAI's layout -> ``clip.model.CLIP`` (float32)."""
    clip = import_clip()
    path = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            state = torch.jit.load(path, map_location="cpu").state_dict()
    except (RuntimeError, ValueError):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                f"{path}: cannot read it as a JIT archive or a state dict "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
    state = _unwrap(state)
    if "token_embedding.weight" not in state or not any(k.startswith("visual.") for k in state):
        raise InputError(f"{path}: not an OpenAI CLIP state dict (no token_embedding.weight / visual.* keys)")
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        model = clip.model.build_model(dict(state))  # the architecture from the shapes (weights cast to fp16)
        model.float().load_state_dict(state)  # then the weights again, at the file's own precision
    except Exception as exc:
        raise InputError(f"{path}: the state dict does not fit OpenAI's CLIP ({str(exc).splitlines()[0]})") from None
    return model.eval()


def _unwrap(state: Any) -> dict:
    if not isinstance(state, dict):
        raise InputError("the file holds no state dict")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _openai_file(arch: str) -> Path:
    """OpenAI's checkpoint file for ``arch``: in ~/.cache/clip, else downloaded; fails fast offline."""
    from . import hub

    clip = import_clip()
    url = clip.clip._MODELS[arch]
    root = Path(os.path.expanduser("~/.cache/clip"))
    cached = root / os.path.basename(url)
    if cached.is_file():
        return cached
    if not hub.hub_reachable(url=url):
        raise ModelNotAvailableError(
            f"clip model {arch!r} is not in {root} and {url.split('/')[2]} cannot be reached: download {url} "
            f"to {cached} where there is internet, or pass --model clip:PATH_TO.pt"
        )
    try:
        return Path(clip.clip._download(url, str(root)))
    except Exception as exc:
        raise ModelNotAvailableError(f"could not download clip model {arch!r} ({str(exc).splitlines()[0]})") from None


# --- the family ------------------------------------------------------------------------------
def _is_openai_clip_model(model: torch.nn.Module) -> bool:
    return "clip.model" in module_names(model)


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> OpenAICLIPBackend:
    return OpenAICLIPBackend(model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer)


def _load(spec: str, *, name: str, processor: Any = None, tokenizer: Any = None) -> OpenAICLIPBackend:
    return load_openai_clip(spec)  # named clip:SPEC, as given


def _load_file(path: Path, *, name: str, processor: Any = None, tokenizer: Any = None) -> OpenAICLIPBackend:
    return load_openai_clip(str(path))  # a checkpoint file is read in OpenAI's layout (named clip:PATH)


OPENAI_CLIP = register(
    Family(
        name="OpenAI clip",
        supports="OpenAI clip CLIP",
        recognises=_is_openai_clip_model,
        wrap=_wrap,
        prefix="clip:",
        load=_load,
        recognises_path=Path.is_file,
        load_path=_load_file,
        install_hint=(
            "pip install 'm2ib[clip]' (OpenAI's clip package needs a torchvision built for your torch, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1)"
        ),
    )
)
