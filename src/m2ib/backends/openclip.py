"""Backend for OpenCLIP models (``open_clip``, PyPI ``open-clip-torch``): ViT and ResNet towers.

Names (after the ``open_clip:`` prefix of :func:`m2ib.load`), OpenCLIP's own scheme:

- ``ARCH@TAG``: an architecture from ``open_clip.list_models()`` with a pretrained tag from
  ``open_clip.list_pretrained_tags_by_model(ARCH)``, e.g. ``ViT-B-32@laion2b_s34b_b79k``;
  taken from the local cache, else downloaded; offline it fails fast, saying how to get it.
- ``ARCH@FILE``: the architecture with weights from a local checkpoint file.
- ``ARCH`` or ``ARCH@random``: random weights, offline (smoke tests; maps mean nothing).
- ``hf-hub:ORG/REPO``: a hub repository in OpenCLIP's format (``open_clip_config.json``).
- ``local-dir:DIR`` or a directory holding ``open_clip_config.json`` and the weights.

The split forward reproduces ``encode_image`` / ``encode_text``: class-token or average
pooling, ``ln_post`` and ``proj``; the text tower's causal mask, the end-of-text token (the
largest id, or ``eos_id``) and ``text_projection``. A causal text tower that pools the end
token never sees the padding after it, so texts are padded to the longest one in the batch,
not to the 77-token context: same embeddings, less work.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelNotAvailableError
from .base import Modality, TextBatch
from .coca import CLS_ID, CLS_TOKEN, CoCaTextTower, class_token_layout
from .openai_towers import OpenAITextTower
from .openclip_tokens import hf_library_ids, hf_text_batch, hf_text_by_name, hub_tokenizer, transformers_tokenizer
from .openclip_visual import image_tower, preprocessing_of
from .registry import Family, family_of_model, module_names, register, saved_info
from .tokens import protect_specials, readable_tokens, short, word_ids
from .towers import Tower, TowersBackend


def import_open_clip():
    """``open_clip``, or a one-line error naming the install to run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import open_clip
    except ImportError as exc:
        if getattr(exc, "name", "") in ("open_clip", None) or "open_clip" in str(exc):
            raise InputError(f"OpenCLIP models need the open_clip package: {OPENCLIP.install_hint}") from None
        raise InputError(f"open_clip failed to import ({str(exc).splitlines()[0]}): {OPENCLIP.install_hint}") from None
    except (RuntimeError, OSError, AttributeError) as exc:  # e.g. torchvision built for another torch
        raise InputError(f"open_clip failed to import ({str(exc).splitlines()[0]}): {OPENCLIP.install_hint}") from None
    return open_clip


class BPETokens:
    """Tokenising with a CLIP ``SimpleTokenizer`` (OpenCLIP's or OpenAI's): the library's own ids,
    then readable tokens, the real-token mask (up to the end-of-text token) and start/end positions."""

    tokenizer: Any
    towers: dict
    device: torch.device  # given by the backend the mixin joins, as is context_length

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    def _library_ids(self, texts: list[str], context: int) -> torch.Tensor:
        raise NotImplementedError

    def _bpe(self) -> Any:
        return self.tokenizer

    def _special_ids(self) -> tuple[int, int]:
        bpe = self._bpe()
        if hasattr(bpe, "sot_token_id"):  # OpenCLIP's (<start_of_text>, <end_of_text>)
            return bpe.sot_token_id, bpe.eot_token_id
        return bpe.encoder["<|startoftext|>"], bpe.encoder["<|endoftext|>"]  # OpenAI's

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        texts = list(texts)
        limit = self.context_length
        bpe = self._bpe()
        specials = [bpe.decoder[i] for i in self._special_ids()]
        given, texts = texts, [protect_specials(text, specials) for text in texts]  # typed specials stay text
        for text in texts:
            n = len(bpe.encode(text)) + 2
            if n > limit:
                warnings.warn(
                    f"text {short(text)!r} has {n} tokens but the model reads {limit}: "
                    f"the last {n - limit} tokens were dropped",
                    stacklevel=3,
                )
        ids = torch.as_tensor(self._library_ids(texts, limit)).long()
        return self.text_batch(ids, None, given)

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        sot, eot = self._special_ids()
        input_ids = input_ids.long().cpu()
        if attention_mask is None:  # real tokens: up to the first end-of-text token
            is_end = input_ids == eot
            last = torch.where(is_end.any(1), is_end.int().argmax(1), input_ids.shape[1] - 1)
            attention_mask = (torch.arange(input_ids.shape[1])[None] <= last[:, None]).long()
        attention_mask = attention_mask.long().cpu()
        if self.towers["text"].truncates:  # drop the padding columns no real token needs
            keep = int(attention_mask.sum(1).max())
            input_ids, attention_mask = input_ids[:, :keep], attention_mask[:, :keep]
        if self.towers["text"].appends_class and not bool((input_ids == CLS_ID).any()):  # CoCa: its class row
            input_ids, attention_mask = class_token_layout(input_ids, attention_mask)
        decoder = self._bpe().decoder
        tokens, special, words = [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            ids = [i for i, m in zip(ids, mask) if m]
            pieces = [CLS_TOKEN if i == CLS_ID else decoder.get(i, f"<{i}>") for i in ids]
            where = tuple(j for j, i in enumerate(ids) if i in (sot, eot, CLS_ID))
            tokens.append(readable_tokens(pieces, where))
            special.append(where)
            words.append(word_ids(pieces, where))
        if not texts:
            texts = [
                self._bpe().decode([i for i, m in zip(row, mask) if m and i not in (sot, eot, CLS_ID)]).strip()
                for row, mask in zip(input_ids.tolist(), attention_mask.tolist())
            ]
        return TextBatch(
            input_ids.to(self.device),
            attention_mask.to(self.device),
            tuple(texts),
            tuple(tokens),
            tuple(special),
            tuple(words),
        )


@dataclass
class OpenCLIPBackend(BPETokens, TowersBackend):
    """An OpenCLIP ``CLIP`` / ``CustomTextCLIP`` (ViT or ModifiedResNet image tower, OpenCLIP text
    transformer) behind m2ib's backend interface."""

    def build_towers(self) -> dict[Modality, Tower]:
        model: Any = self.model  # an open_clip CLIP / CustomTextCLIP: open_clip ships no types
        if not hasattr(model, "visual"):
            raise InputError(f"{type(model).__name__} has no image tower `visual`: not an OpenCLIP CLIP model")
        text_owner = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower in .text
        if not hasattr(text_owner, "token_embedding"):
            raise InputError(
                f"OpenCLIP text tower {type(text_owner).__name__} is not supported (Hugging Face text "
                "encoders are not yet): use a model with OpenCLIP's own text transformer"
            )
        causal = getattr(text_owner, "attn_mask", None) is not None
        pool = getattr(text_owner, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
        if not isinstance(pool, str):
            raise InputError(f"OpenCLIP text pool_type {pool!r} is not a pooling name")
        eos = getattr(text_owner, "eos_id", None) if text_owner is not model else getattr(model, "text_eos_id", None)
        if getattr(text_owner, "cls_emb", None) is not None:  # CoCa: a class embedding after the text
            text: OpenAITextTower = CoCaTextTower(text_owner)
        else:
            text = OpenAITextTower(
                text_owner,
                causal=causal,
                pool=pool,
                eos_id=eos,
                pad_id=getattr(text_owner, "pad_id", 0),
                pad_mask=bool(getattr(text_owner, "use_pad_mask", False)),
            )
        if self.preprocessing is None:
            self.preprocessing = preprocessing_of(model)
        if self.tokenizer is None:
            raise InputError(f"model {self.name!r} has no tokenizer: pass tokenizer= (open_clip.get_tokenizer(ARCH))")
        bpe = hasattr(self.tokenizer, "decoder") and hasattr(self.tokenizer, "encode")
        if not bpe and transformers_tokenizer(self.tokenizer) is None:
            raise InputError(
                f"tokenizer {type(self.tokenizer).__name__} is not supported: OpenCLIP's tokenizers are "
                "(CLIP's BPE, HFTokenizer) and transformers tokenizers"
            )
        if not bpe and text.appends_class:
            raise InputError("CoCa text towers read CLIP's BPE tokenizer here (a Hugging Face one is not supported)")
        return {"image": image_tower(model.visual), "text": text}

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        if transformers_tokenizer(self.tokenizer) is None:
            return super().tokenize(texts)
        return self.text_batch(hf_library_ids(self.tokenizer, texts, self.context_length), None, texts)

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        if transformers_tokenizer(self.tokenizer) is None:
            return super().text_batch(input_ids, attention_mask, texts)
        return hf_text_batch(self.tokenizer, input_ids, attention_mask, texts, self.device)

    @property
    def context_length(self) -> int:
        return self.towers["text"].context_length

    def _library_ids(self, texts: list[str], context: int) -> torch.Tensor:
        return self.tokenizer(texts, context_length=context)


# --- loading by name -------------------------------------------------------------------------
def load_open_clip(spec: str) -> TowersBackend:
    """An OpenCLIP model by OpenCLIP's names (see the module docstring)."""
    name = f"open_clip:{spec}"
    if spec.startswith("hf-hub:"):
        from . import hub

        repo = spec[len("hf-hub:") :]
        howto = (
            f"download it where there is internet (`hf download {repo} --local-dir DIR`) and pass "
            f"--model open_clip:local-dir:DIR, or fill the Hugging Face cache"
        )
        files = ["open_clip_config.json", "*.txt", "*.json", "*.model"]  # *.model: a SentencePiece tokenizer
        path = hub.hub_snapshot(repo, patterns=[*files, "*.safetensors"], howto=howto)
        if _checkpoint_in(path) is None:  # no safetensors: the pickled checkpoint
            path = hub.hub_snapshot(repo, patterns=[*files, "*.bin"], howto=howto)
        return load_open_clip_dir(path, name)
    if spec.startswith("local-dir:"):
        return load_open_clip_dir(Path(spec[len("local-dir:") :]).expanduser(), name)
    if Path(spec).expanduser().is_dir():
        return load_open_clip_dir(Path(spec).expanduser(), name)
    oc = import_open_clip()
    arch, _, tag = spec.partition("@")
    arch = arch.replace("/", "-")  # OpenCLIP's own normalisation (ViT-B/32 -> ViT-B-32)
    if arch not in oc.list_models():
        close = [m for m in oc.list_models() if m.lower().startswith(arch.lower()[:5])][:8]
        raise InputError(
            f"open_clip has no architecture {arch!r}"
            + (f": similar: {', '.join(close)}" if close else "; see open_clip.list_models()")
        )
    cfg = oc.get_model_config(arch) or {}
    tokenizer = None
    kwargs: dict[str, Any] = {}
    hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if hf_text:  # a Hugging Face text tower: its config and tokenizer from the cache, before open_clip asks the hub
        kwargs["text_cfg"], tokenizer = hf_text_by_name(arch, cfg["text_cfg"])
    elif cfg.get("text_cfg", {}).get("hf_tokenizer_name"):
        tokenizer = hub_tokenizer(oc, arch, cfg["text_cfg"], tag in ("", "random"), name)
    if tag in ("", "random"):
        pretrained = None
        if tag == "":
            warnings.warn(
                f"{name}: no pretrained tag, so the weights are RANDOM (name a tag, e.g. "
                f"open_clip:{arch}@{_first_tag(oc, arch)}, or write @random to silence this)",
                stacklevel=3,
            )
    elif Path(tag).expanduser().is_file():
        pretrained = str(Path(tag).expanduser())
    else:
        cfg = oc.get_pretrained_cfg(arch, tag)
        if not cfg:
            tags = oc.list_pretrained_tags_by_model(arch)
            raise InputError(
                f"{tag!r} is not a pretrained tag of open_clip {arch} nor a file: "
                f"tags: {', '.join(tags) if tags else 'none'}; or @random"
            )
        pretrained = _pretrained_file(oc, arch, tag, cfg)
        kwargs["force_preprocess_cfg"] = {
            k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg
        }
        if cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True  # what the weights were trained with
    model = _quiet(oc.create_model, arch, pretrained=pretrained, **kwargs).eval()
    if hf_text:  # the OpenCLIP HF text family's backend
        return _hf_text_backend(model, name, tokenizer)
    return OpenCLIPBackend(model=model, name=name, tokenizer=tokenizer or oc.get_tokenizer(arch))


def load_open_clip_dir(path: Path, name: str | None = None) -> TowersBackend:
    """A directory in OpenCLIP's format: ``open_clip_config.json`` and a checkpoint."""
    path = Path(path)
    if not (path / "open_clip_config.json").exists():
        raise InputError(f"{path}: no open_clip_config.json here; pass a directory in OpenCLIP's format")
    if _checkpoint_in(path) is None:  # OpenCLIP would quietly build random weights
        raise InputError(f"{path}: no checkpoint (*.safetensors, *.bin, *.pth, *.pt) next to open_clip_config.json")
    oc = import_open_clip()
    spec = f"local-dir:{path}"
    text_cfg = json.loads((path / "open_clip_config.json").read_text()).get("model_cfg", {}).get("text_cfg", {})
    if "hf_model_name" in text_cfg:  # BiomedCLIP: its PubMedBERT's config and tokenizer from the cache
        text_cfg, tokenizer = hf_text_by_name(spec, text_cfg)
        model = _quiet(oc.create_model, spec, text_cfg=text_cfg).eval()
        return _hf_text_backend(model, name or str(path), tokenizer, saved_info(path))
    model = _quiet(oc.create_model, spec).eval()
    recommended = saved_info(path).get("recommended", {})
    return OpenCLIPBackend(
        model=model, name=name or str(path), tokenizer=oc.get_tokenizer(spec), recommended=recommended
    )


def _hf_text_backend(model: torch.nn.Module, name: str, tokenizer: Any, info: dict | None = None) -> TowersBackend:
    """The OpenCLIP HF text family's backend for a model with a Hugging Face text tower (``info``: its
    directory's m2ib.json)."""
    family = family_of_model(model)
    backend = None if family is None else family.wrap(model, name, tokenizer, None, info or {})
    if not isinstance(backend, TowersBackend):  # that family registers on import of the backends package
        raise RuntimeError(f"OpenCLIP model {name!r} has a Hugging Face text tower but no family wraps it")
    return backend


def _checkpoint_in(path: Path) -> Path | None:
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(Path(path).glob(pattern))
        if found:
            return found[0]
    return None


def _first_tag(oc: Any, arch: str) -> str:
    tags = oc.list_pretrained_tags_by_model(arch)
    return tags[0] if tags else "TAG"


def _pretrained_file(oc: Any, arch: str, tag: str, cfg: dict) -> str:
    """The local file of a pretrained tag: cached, else downloaded; offline, a fast one-line error."""
    from . import hub

    hub_file = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub_file:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub_file)  # 'org/name/' names the default file, 'org/name/file' that file
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fname in names:
            cached = try_to_load_from_cache(repo, fname)
            if isinstance(cached, str):
                return cached
        howto = (
            f"download it where there is internet (`hf download {repo} {names[0]} --local-dir DIR`) and pass "
            f"--model open_clip:{arch}@DIR/{names[0]}, or fill the Hugging Face cache"
        )
        offline = hub.hub_offline()
        if offline or not hub.hub_reachable():
            why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
            raise ModelNotAvailableError(f"open_clip {arch}@{tag} is not in the local cache and {why}: {howto}")
    elif url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return str(cached)
        if not hub.hub_reachable(url=url):
            raise ModelNotAvailableError(
                f"open_clip {arch}@{tag} is not in the local cache and {url} cannot be "
                f"reached: download it there ({cached}) or pass --model open_clip:{arch}@FILE"
            )
    try:
        return oc.download_pretrained(cfg)
    except Exception as exc:
        raise ModelNotAvailableError(
            f"could not download open_clip {arch}@{tag} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


def _quiet(fn, *args, **kwargs):
    """Call an open_clip factory without its 'no pretrained weights' log lines."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        return fn(*args, **kwargs)
    finally:
        logger.setLevel(level)


# --- the family ------------------------------------------------------------------------------
def _is_open_clip_model(model: torch.nn.Module) -> bool:
    text = getattr(model, "text", None)  # a Hugging Face text tower is the OpenCLIP HF text family's
    hf_text = type(text).__name__ == "HFTextEncoder"
    return any(m.startswith("open_clip.") for m in module_names(model)) and not hf_text


def _wrap(model: torch.nn.Module, name: str, tokenizer: Any, processor: Any, info: dict) -> OpenCLIPBackend:
    if tokenizer is None:
        tokenizer = import_open_clip().get_tokenizer("ViT-B-32")  # CLIP's BPE; pass tokenizer= for other vocabularies
    return OpenCLIPBackend(model=model, name=name, recommended=info.get("recommended", {}), tokenizer=tokenizer)


def _load(spec: str, *, name: str, processor: Any = None, tokenizer: Any = None) -> TowersBackend:
    return load_open_clip(spec)  # named open_clip:SPEC, as given


def _is_open_clip_directory(path: Path) -> bool:
    return path.is_dir() and not (path / "config.json").exists() and (path / "open_clip_config.json").exists()


def _load_directory(path: Path, *, name: str, processor: Any = None, tokenizer: Any = None) -> TowersBackend:
    return load_open_clip_dir(path, name)


OPENCLIP = register(
    Family(
        name="OpenCLIP",
        supports="open_clip CLIP/CustomTextCLIP",
        recognises=_is_open_clip_model,
        wrap=_wrap,
        prefix="open_clip:",
        load=_load,
        recognises_path=_is_open_clip_directory,
        load_path=_load_directory,
        install_hint=(
            "pip install 'm2ib[open_clip]' (OpenCLIP needs a torchvision built for your torch, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1)"
        ),
    )
)
