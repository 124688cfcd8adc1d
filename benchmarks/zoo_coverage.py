"""Coverage of the OpenCLIP zoo: every config ``open_clip.list_models()`` lists, scaled down, random weights.

For each config, a copy of the same architecture is built through ``open_clip.create_model``
(the same tower classes and options; width 32, depth 2, a 64-pixel input or 4 patches a side,
a small CoCa decoder; timm trunks get the same sizes through their own arguments), with
unit-scale random weights (:func:`spread_weights`: embeddings of order 1, so 1e-5 means something).
Then:

- parity: the split forward (prefix to block l, suffix from l, every l) against the library's
  ``encode_image`` / ``encode_text``, largest absolute difference over layers (pass: <= 1e-5);
- M2IB: ``m2ib.explain`` with 2 steps and 2 samples (both modalities);
- one attention method (``chefer``) where the towers record attention; ResNet towers have none
  (said in the row; they count as covered when parity and M2IB pass).

A config is *covered* when all of that passes. Text towers are fed CLIP's BPE tokenizer: configs
whose tokenizer is a Hugging Face one (SigLIP's, multilingual) get a text tower of the same
class and options with CLIP's vocabulary size, since that tokenizer cannot be fetched offline.
Hugging Face text towers (``HFTextEncoder``) are built by OpenCLIP from a small transformers config
of the model type their hub name names (:func:`hf_model_type`: the hub config cannot be fetched
offline), with the config's pooler and projection, and fed a small WordPiece tokenizer.

    python benchmarks/zoo_coverage.py                      # every config (about 10 minutes on 2 cores)
    python benchmarks/zoo_coverage.py --models ViT-B-32 RN50 --out zoo.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from tqdm import tqdm

import m2ib
from m2ib.fileio import atomic_write_text
from m2ib.inputs import load_image

TOL = 1e-5
WIDTH, DEPTH, HEADS, IMAGE = 32, 2, 2, 64
TIMM_SIZES = (
    dict(img_size=IMAGE, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS),  # ViT-like trunks
    dict(img_size=IMAGE, depth=DEPTH),  # ViT-like trunks whose width is their stem's (ViTamin)
    dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),  # ConvNeXt-like trunks
    # FastViT (MobileCLIP): one block per stage, the stage count kept (a 4-stage trunk fails on
    # the 5-stage sizes with an IndexError, so it never builds with a stage dropped or added)
    dict(layers=(1, 1, 1, 1, 1), embed_dims=(32, 32, 32, 64, 64)),  # widths its grouped convs divide
    dict(layers=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64)),
    {},
)  # anything else: its own sizes
TEXTS = ["a red circle", "a photo of a cat and a dog"]


@dataclass
class Row:
    config: str
    image_tower: str = "?"
    text_tower: str = "?"
    image_parity: float | None = None
    text_parity: float | None = None
    m2ib: bool = False
    attention: str = "-"
    reason: str = ""

    @property
    def covered(self) -> bool:
        parity = all(p is not None and p <= TOL for p in (self.image_parity, self.text_parity))
        return parity and self.m2ib and self.attention in ("chefer", "none in tower")


@contextlib.contextmanager
def scaled_timm(sizes: dict):
    """While open, OpenCLIP's ``timm.create_model`` gets ``sizes`` on top of its own arguments."""
    import open_clip.timm_model as timm_model

    original = timm_model.timm.create_model

    def create(name, **kwargs):
        return original(name, **{**kwargs, **sizes})

    timm_model.timm.create_model = create
    try:
        yield
    finally:
        timm_model.timm.create_model = original


def scaled_config(cfg: dict) -> dict:
    """The config with small widths and depths (every option kept)."""
    cfg = copy.deepcopy(cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision:
        vision["image_size"] = IMAGE
    elif isinstance(vision.get("layers"), (list, tuple)):  # ModifiedResNet
        vision.update(layers=(1, 1, 1, 1), width=16, head_width=8, image_size=IMAGE)
    else:
        vision.update(layers=DEPTH, width=WIDTH, head_width=WIDTH // HEADS, image_size=4 * vision.get("patch_size", 16))
    if "hf_model_name" in text:  # a small config of the same type (small_hf_text), random weights
        text["hf_model_pretrained"] = False
    else:
        text.update(layers=DEPTH, width=WIDTH, heads=HEADS)
        if text.get("hf_tokenizer_name"):  # CLIP's BPE feeds it (a hub tokenizer cannot be fetched offline)
            text.pop("hf_tokenizer_name")
            text.pop("tokenizer_kwargs", None)
            text["vocab_size"] = 49408
    if "multimodal_cfg" in cfg:  # CoCa's decoder
        cfg["multimodal_cfg"].update(layers=1, width=WIDTH, heads=HEADS)
    cfg["embed_dim"] = WIDTH
    return cfg


HF_SIZES = {
    "t5": dict(d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=48, num_layers=DEPTH, num_heads=HEADS),
    "m2m_100": dict(
        d_model=WIDTH,
        encoder_layers=DEPTH,
        decoder_layers=1,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
    ),
    "bert": dict(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=48,
        max_position_embeddings=80,
    ),
}
HF_WORDS = sorted({w for text in TEXTS for w in text.split()})


def hf_model_type(hf_name: str) -> str:
    """The transformers model type of a hub name, from OpenCLIP's own list of types (longest match)."""
    from open_clip.hf_configs import arch_dict

    name = hf_name.lower().split("/")[-1].replace("nllb", "m2m_100")
    found = sorted((t for t in arch_dict if t in name), key=len, reverse=True)
    if not found:
        raise ValueError(f"no OpenCLIP arch_dict type in {hf_name!r}")
    return found[0]


def small_hf_config(hf_name: str):
    from transformers import AutoConfig

    model_type = hf_model_type(hf_name)
    sizes = HF_SIZES["t5" if "t5" in model_type else model_type if model_type in HF_SIZES else "bert"]
    extra = {} if model_type == "bert" or model_type not in ("roberta", "xlm-roberta") else dict(pad_token_id=1)
    return AutoConfig.for_model(model_type, vocab_size=64, **sizes, **extra)


@contextlib.contextmanager
def small_hf_text(hf_name: str | None):
    """While open, OpenCLIP's ``AutoConfig.from_pretrained`` gives a small config of ``hf_name``'s type."""
    if hf_name is None:
        yield
        return
    import open_clip.hf_model as hf_model

    original, config = hf_model.AutoConfig, small_hf_config(hf_name)

    class Small:
        @staticmethod
        def from_pretrained(_name, *args, **kwargs):
            return config

    hf_model.AutoConfig = Small
    try:
        yield
    finally:
        hf_model.AutoConfig = original


def hf_tokenizer(pad_id: int):
    """A WordPiece tokenizer over the words of ``TEXTS`` whose padding id is the model's."""
    import tempfile
    from pathlib import Path

    from transformers import BertTokenizer

    specials = ["[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    specials.insert(pad_id, "[PAD]")
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    path.write_text("\n".join(specials + HF_WORDS) + "\n")
    return BertTokenizer(str(path))


def build(oc, name: str, cfg: dict) -> torch.nn.Module:
    small = scaled_config(cfg)
    kwargs = {k: small[k] for k in ("embed_dim", "vision_cfg", "text_cfg", "multimodal_cfg") if k in small}
    error: Exception | None = None
    for sizes in TIMM_SIZES if "timm_model_name" in small["vision_cfg"] else ({},):
        try:
            with scaled_timm(sizes), small_hf_text(small["text_cfg"].get("hf_model_name")), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                return oc.create_model(name, pretrained=None, **kwargs).eval()
        except (TypeError, AssertionError, ValueError, IndexError) as exc:  # this trunk takes other sizes: the next set
            error = exc
    raise error


def spread_weights(model: torch.nn.Module, seed: int = 7) -> None:
    """Unit-scale random weights (norm scales near 1, matrices with std 1/sqrt(fan_in)): the libraries'
    small initialisations give embeddings of about 1e-5, which would make a 1e-5 parity check vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 0:  # the logit scale
                continue
            noise = torch.randn(param.shape, generator=g)
            if param.dim() == 1:
                param.copy_(1 + 0.1 * noise if param.abs().max() > 0.5 else 0.1 * noise)  # norm scales, biases
            else:
                param.copy_(noise / param[0].numel() ** 0.5)


def tower_kinds(model: torch.nn.Module) -> tuple[str, str]:
    visual = model.visual
    trunk = getattr(visual, "trunk", None)
    image = f"timm {type(trunk).__name__}" if trunk is not None else type(visual).__name__
    text = getattr(model, "text", model)
    return image, type(text).__name__ if text is not model else "TextTransformer"


def parity(backend, modality: str, batch, reference: torch.Tensor) -> float:
    worst = 0.0
    for layer in (-1, *range(backend.num_layers(modality))):
        got = backend.suffix(modality, backend.prefix(modality, batch, layer), layer, batch)
        worst = max(worst, (got - reference).abs().max().item())
    return worst


def check(oc, name: str, pictures) -> Row:
    row = Row(name)
    cfg = oc.get_model_config(name)
    hf_text = "hf_model_name" in cfg["text_cfg"]
    try:
        model = build(oc, name, cfg)
    except Exception as exc:  # the row says why
        row.reason = f"not built: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    row.image_tower, row.text_tower = tower_kinds(model)
    if hf_text:
        row.text_tower = f"HF {type(model.text.transformer).__name__}"
    tokenizer = hf_tokenizer(model.text.config.pad_token_id or 0) if hf_text else oc.get_tokenizer("ViT-B-32")
    try:
        backend = m2ib.load(model, tokenizer=tokenizer)
    except Exception as exc:
        row.reason = str(exc).splitlines()[0][:160]
        return row
    spread_weights(model)  # after the load: unsupported (often full-size) towers never pay for it
    context = backend.context_length
    try:
        with torch.no_grad():
            images = backend.preprocess_images(pictures)
            texts = backend.tokenize(TEXTS)
            row.image_parity = parity(
                backend, "image", images, model.encode_image(images.pixel_values, normalize=False)
            )
            ids = texts.input_ids if hf_text else tokenizer(TEXTS, context_length=context)
            reference = model.encode_text(ids, normalize=False)  # CoCa normalises by default
            row.text_parity = parity(backend, "text", texts, reference)
    except Exception as exc:
        row.reason = f"split forward failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    try:
        m2ib.explain(backend, pictures[0], TEXTS[0], method="m2ib", steps=2, samples=2)
        row.m2ib = True
        if backend.supports_attention:
            m2ib.explain(backend, pictures[0], TEXTS[0], method="chefer")
            row.attention = "chefer"
        else:
            row.attention = "none in tower"
    except Exception as exc:
        row.reason = f"{'chefer' if row.m2ib else 'M2IB'} failed: {str(exc).splitlines()[0][:120]}"
    if not row.reason and not row.covered:
        row.reason = f"parity {max(row.image_parity, row.text_parity):.1e} > {TOL:.0e}"
    return row


def table(rows: list[Row]) -> str:
    def fmt(p):
        return "-" if p is None else f"{p:.1e}"

    lines = [
        "| config | image tower | text tower | image parity | text parity | M2IB | attention | covered | why not |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.config} | {r.image_tower} | {r.text_tower} | {fmt(r.image_parity)} | {fmt(r.text_parity)} "
            f"| {'yes' if r.m2ib else 'no'} | {r.attention} | {'yes' if r.covered else 'NO'} | {r.reason} |"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    covered = sum(r.covered for r in rows)
    return f"covered: {covered} of {len(rows)} OpenCLIP configs ({100 * covered / max(len(rows), 1):.1f} %)"


def run(models: list[str] | None = None, progress: bool = True) -> list[Row]:
    from m2ib.backends.openclip import import_open_clip

    oc = import_open_clip()
    names = models or oc.list_models()
    g = torch.Generator().manual_seed(0)
    pictures = [load_image(torch.rand(3, 72, 96, generator=g))[0], load_image(torch.rand(3, 80, 64, generator=g))[0]]
    rows = []
    for name in tqdm(names, desc="OpenCLIP configs", disable=not progress):
        rows.append(check(oc, name, pictures))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="configs to check (default: every one open_clip lists)")
    parser.add_argument("--out", help="also write the table and the summary to this Markdown file")
    args = parser.parse_args(argv)
    start = time.time()
    rows = run(args.models)
    text = f"{table(rows)}\n\n{summary(rows)} ({time.time() - start:.0f} s, torch {torch.__version__})\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
