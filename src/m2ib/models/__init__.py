"""Models m2ib knows by name: the shipped shapes-world CLIP and random-weight CLIPs.

Each entry is data (a name, a description and how to build it, or where it is saved), so the
CLI's help and ``m2ib.list_models()`` come from this one table. Nothing here wraps a model in a
backend: ``m2ib.backends`` reads this table, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

MODELS_DIR = Path(__file__).parent
# What the CLI and README use when no model is named: the shipped shapes-world CLIP.
DEFAULT_MODEL = "shapes"

# Words the random demo models' tokenizer knows as single tokens (others split into letters).
DEMO_WORDS = (
    "a an the of and with in on photo picture image red green blue yellow orange purple "
    "circle square triangle star cross cat dog bird car tree house person man woman"
).split()


@dataclass(frozen=True)
class RandomCLIPSpec:
    """Shape of a random-weight CLIP (a transformers CLIPConfig in few numbers)."""

    image_size: int  # input resolution in pixels
    patch_size: int  # patch side in pixels
    vision_width: int  # hidden size of the image tower
    vision_layers: int  # blocks in the image tower
    vision_heads: int  # attention heads in the image tower
    text_width: int  # hidden size of the text tower
    text_layers: int  # blocks in the text tower
    text_heads: int  # attention heads in the text tower
    embed_dim: int  # size of the joint embedding
    vocab_size: int | None = None  # None: the demo word tokenizer's size
    context_length: int = 77  # most text tokens, start/end included


@dataclass(frozen=True)
class BuiltinModel:
    """A model m2ib knows by name: built in code (``build``) or saved in the package (``directory``,
    which the loader reads as it reads any saved model directory)."""

    name: str
    description: str
    # -> model, tokenizer, preprocessing, info
    build: Callable[[], tuple[torch.nn.Module, object, object, dict]] | None = None
    directory: Path | None = None  # a save_pretrained directory (weights, tokenizer, m2ib.json settings)
    missing_hint: str = "reinstall m2ib"  # what to do when this install lacks the directory
    generative: bool = False  # a generative VLM (m2ib.explain_answer), not a CLIP (m2ib.load)

    def saved_directory(self) -> Path:
        """``directory``, or a one-line error when this install lacks it."""
        from ..errors import ModelNotAvailableError

        if self.directory is None or not (self.directory / "config.json").exists():
            raise ModelNotAvailableError(
                f"the {self.name} model is missing from this install ({self.directory}): {self.missing_hint}"
            )
        return self.directory


def clip_config(arch, tokenizer, **extra):
    """A ``transformers`` CLIPConfig (sdpa attention) from an architecture description: any object
    with RandomCLIPSpec's fields (a RandomCLIPSpec, a training config), and the tokenizer's ids."""
    from transformers import CLIPConfig

    vocab = getattr(arch, "vocab_size", None) or len(tokenizer)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=arch.text_width,
            intermediate_size=4 * arch.text_width,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=arch.context_length,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=arch.image_size,
            patch_size=arch.patch_size,
            hidden_size=arch.vision_width,
            intermediate_size=4 * arch.vision_width,
            num_hidden_layers=arch.vision_layers,
            num_attention_heads=arch.vision_heads,
        ),
        projection_dim=arch.embed_dim,
        **extra,
    )
    config._attn_implementation = "sdpa"
    return config


def random_clip(spec: RandomCLIPSpec, seed: int = 0):
    """A CLIPModel with random weights (deterministic from ``seed``) and the demo tokenizer."""
    from transformers import CLIPModel

    from ..tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(DEMO_WORDS)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
        torch.manual_seed(seed)
        model = CLIPModel(clip_config(spec, tokenizer)).eval()
    return model, tokenizer


TINY = RandomCLIPSpec(
    image_size=64,
    patch_size=8,
    vision_width=64,
    vision_layers=4,
    vision_heads=4,
    text_width=64,
    text_layers=4,
    text_heads=4,
    embed_dim=32,
)
# The shape of OpenAI's ViT-B/32 (transformers' CLIPConfig() defaults), for benchmarks.
VIT_B_32 = RandomCLIPSpec(
    image_size=224,
    patch_size=32,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
    embed_dim=512,
    vocab_size=49408,
)


def _random_builder(spec: RandomCLIPSpec, label: str):
    def build():
        model, tokenizer = random_clip(spec)
        return model, tokenizer, None, {"note": f"{label}: RANDOM WEIGHTS, maps are not meaningful"}

    return build


SHAPES_DIR = MODELS_DIR / "shapes"
# A generative model (LLaVA) on the shapes world; its saved weights leave out the vision tower,
# which is the shapes CLIP's (m2ib.json's vision_tower_from; the loader puts it back).
SHAPES_VQA_DIR = MODELS_DIR / "shapes_vqa"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "shapes",
            "small CLIP trained on m2ib's synthetic shapes world (96 px, offline default)",
            directory=SHAPES_DIR,
            missing_hint="reinstall m2ib, or train one with `m2ib train-shapes --out DIR`",
        ),
        BuiltinModel(
            "shapes-vqa",
            "small LLaVA answering questions about the shapes world (the shapes CLIP's vision tower; "
            "generative: explain its answers with --answer)",
            directory=SHAPES_VQA_DIR,
            missing_hint="reinstall m2ib, or train one with `python -m m2ib.training.vqa --out DIR`",
            generative=True,
        ),
        BuiltinModel(
            "random-tiny",
            "tiny CLIP with random weights (64 px, 4+4 blocks): a smoke test, its maps mean nothing",
            _random_builder(TINY, "random-tiny"),
        ),
        BuiltinModel(
            "random-vit-b-32",
            "CLIP ViT-B/32-shaped model with random weights (for benchmarks)",
            _random_builder(VIT_B_32, "random-vit-b-32"),
        ),
    )
}


def builtin_names(generative: bool = False) -> list[str]:
    """The built-in models' names: the CLIPs (``m2ib.load``), or with ``generative`` the generative
    VLMs (``m2ib.explain_answer``)."""
    return [name for name, model in BUILTIN_MODELS.items() if model.generative == generative]


def generative_refusal(name: str) -> str:
    """The one line for a built-in generative model given where a CLIP is expected."""
    return (
        f"{name} is a generative VLM, not a CLIP: explain its answers with m2ib.explain_answer(image, prompt, "
        f"model={name!r}) or `m2ib explain IMAGE PROMPT --answer TEXT --model {name}`"
    )
