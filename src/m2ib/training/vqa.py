"""Train shapes-vqa: a small ``transformers`` LlavaForConditionalGeneration that answers questions
about shapes-world scenes, on a CPU, in minutes.

    python -m m2ib.training.vqa --out DIR            # the shipped model's run
    python -m m2ib.training.vqa --out DIR --quick    # a tiny run: seconds

The vision tower is the shipped ``shapes`` CLIP's, frozen: its features (``vision_feature_layer``,
the class token dropped: LLaVA's ``default`` strategy) are computed once for every training scene
and cached; the projector and a small Llama are trained on them with the answer's tokens'
cross-entropy only (teacher forcing). Questions and the prompt format: :mod:`.vqa_data`.

The saved directory holds everything ``save_pretrained`` writes (the whole LlavaConfig, the
processor) except the vision tower's weights, which are the ``shapes`` model's: ``m2ib.json``
names that model and its weights' sha256, and :func:`m2ib.generative.loading.load_generative`
puts them back at load (and refuses a ``shapes`` model whose weights changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.shapes import Scene, render_scene, split_seed
from ..models import SHAPES_DIR
from .vqa_data import PROMPT, QUESTION_KINDS, Question, build_tokenizer, make_question

VISION_PREFIX = "model.vision_tower."  # the saved weights leave these out (they are the CLIP's)


@dataclass(frozen=True)
class VQAConfig:
    scenes: int = 1500  # training scenes (2 to 4 objects each); their features are cached
    val_scenes: int = 100  # validation scenes: the accuracy reported at the end of training
    steps: int = 1000
    time_limit: float = 0.0  # seconds of training after which it stops early (0: none); the record says so
    batch_size: int = 32  # questions per step
    per_scene: int = 8  # questions per scene in a step (they share the scene's image tokens)
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    lm_width: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    feature_layer: int = -2  # the CLIP block whose output the projector reads (LLaVA's choice)
    seed: int = 0
    kinds: str = ""  # question kinds' sampling weights, "colour:2,exists:2" ("": uniform; a kind left out: 1)
    init: str = ""  # a saved shapes-vqa folder whose projector and language model training starts from ("": random)


QUICK = VQAConfig(scenes=16, val_scenes=4, steps=3, batch_size=4, per_scene=2, lm_width=32, lm_layers=1, lm_heads=2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(config: VQAConfig):
    """(model, processor): the shapes CLIP's vision tower (its weights) under a fresh projector and
    Llama (random weights from ``config.seed``)."""
    from transformers import (
        AutoImageProcessor,
        CLIPModel,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    clip = CLIPModel.from_pretrained(SHAPES_DIR, dtype=torch.float32)
    tokenizer = build_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.lm_width,
        intermediate_size=4 * config.lm_width,
        num_hidden_layers=config.lm_layers,
        num_attention_heads=config.lm_heads,
        num_key_value_heads=config.lm_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision: Any = clip.config.vision_config
    image: dict[str, Any] = {"image_token_id": tokenizer.convert_tokens_to_ids("<image>")}  # v5's name
    llava = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text,
        **image,
        vision_feature_layer=config.feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlavaForConditionalGeneration(llava).eval()
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.model.vision_tower.requires_grad_(False)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    processor = LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(SHAPES_DIR),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def scenes(split: str, n: int, base: int = 0) -> list[Scene]:
    """The first ``n`` scenes of ``split`` with 2 to 4 objects (a layout that fits fewer is skipped)."""
    out: list[Scene] = []
    i = 0
    while len(out) < n:
        scene = render_scene(split_seed(split, i, base), n_objects=(2, 4))
        i += 1
        if len(scene.objects) >= 2:
            out.append(scene)
    return out


@torch.no_grad()
def image_features(model, processor, items: list, batch: int = 64, progress: bool = True) -> torch.Tensor:
    """The frozen vision tower's features [N, K, D] (float16) of ``items``' images, as LLaVA takes
    them: block ``vision_feature_layer``'s output, the class token dropped."""
    from tqdm import tqdm

    layer = model.config.vision_feature_layer
    out: list[torch.Tensor] = []
    for i in tqdm(range(0, len(items), batch), desc="vision features", disable=not progress):
        pixels = processor.image_processor([s.to_pil() for s in items[i : i + batch]], return_tensors="pt")
        hidden = model.model.vision_tower(pixels["pixel_values"], output_hidden_states=True).hidden_states
        out.append(hidden[layer][:, 1:].half())
    return torch.cat(out)


def prompt_ids(tokenizer, question: Question, image_tokens: int) -> list[int]:
    """The prompt's token ids with the image placeholder expanded, as LlavaProcessor expands it."""
    ids = tokenizer(question.prompt)["input_ids"]
    image = tokenizer.convert_tokens_to_ids("<image>")
    at = ids.index(image)
    return ids[:at] + [image] * image_tokens + ids[at + 1 :]


def kind_weights(spec: str) -> np.ndarray:
    """``"colour:2,shape:1,exists:2,caption:1"`` -> the probabilities of :data:`QUESTION_KINDS`, in
    their order (a kind left out: weight 1); a malformed spec is one line."""
    weights = dict.fromkeys(QUESTION_KINDS, 1.0)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, value = part.partition(":")
        if kind not in weights or not value.replace(".", "", 1).isdigit():
            raise ValueError(f"--kinds {spec!r}: give KIND:WEIGHT pairs, kinds {', '.join(QUESTION_KINDS)}")
        weights[kind] = float(value)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"--kinds {spec!r}: the weights sum to zero")
    return np.array([weights[k] / total for k in QUESTION_KINDS])


def draw_questions(
    items: list, rng: np.random.Generator, n: int, per_scene: int, kinds: str = ""
) -> list[tuple[int, Question]]:
    """``n`` scenes drawn uniformly, ``per_scene`` questions each (kinds drawn with ``kinds``'
    weights, :func:`kind_weights`, uniform by default; a kind a scene cannot ask is redrawn):
    (scene index, question) pairs, a scene's questions together."""
    p = kind_weights(kinds)
    out: list[tuple[int, Question]] = []
    for i in rng.integers(len(items), size=n):
        # colour/shape need an object unique in the scene: a scene that can ask no weighted kind would never end
        if not any(
            w > 0 and make_question(items[int(i)], k, np.random.default_rng(0)) for k, w in zip(QUESTION_KINDS, p)
        ):
            raise ValueError(
                f"--kinds {kinds!r}: training scene {int(i)} can ask none of these kinds; weight exists or caption"
            )
        asked = 0
        while asked < per_scene:
            q = make_question(items[int(i)], QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS), p=p))], rng)
            if q is not None:
                out.append((int(i), q))
                asked += 1
    return out


def make_batch(tokenizer, pairs: list[tuple[int, Question]], image_tokens: int):
    """(input ids [B, L], attention mask [B, L], labels [B, L]: the answer's tokens and ``</s>``,
    -100 elsewhere), right-padded."""
    rows, labels = [], []
    for _, q in pairs:
        prompt = prompt_ids(tokenizer, q, image_tokens)
        answer = tokenizer(q.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    target = torch.full((len(rows), length), -100)
    for b, (r, lab) in enumerate(zip(rows, labels, strict=True)):
        ids[b, : len(r)], mask[b, : len(r)], target[b, : len(r)] = torch.tensor(r), 1, torch.tensor(lab)
    return ids, mask, target


def _with_image(model, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The input embeddings of ``ids`` with the projector's output of ``features`` at the image tokens."""
    embeds = model.get_input_embeddings()(ids)
    states = model.model.multi_modal_projector(features.float())
    return embeds.masked_scatter((ids == model.config.image_token_id)[..., None], states.to(embeds.dtype))


def shared_prefix_logits(model, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """:func:`logits_from_features` for ``per_scene`` questions in a row about each scene of
    ``features`` [S, K, D] (``ids`` [S * per_scene, L]), the prompt's part up to the image computed
    once per scene (it is the same for every question): (logits [B, L - P, V] after it, P: that
    part's length). Training only: a third of the work of the plain forward."""
    image = (ids[0] == model.config.image_token_id).nonzero()[:, 0]
    cut = int(image.max()) + 1
    per_scene = ids.shape[0] // features.shape[0]
    lm = model.model.language_model
    prefix = lm(inputs_embeds=_with_image(model, ids[::per_scene, :cut], features), use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(per_scene)
    embeds = model.get_input_embeddings()(ids[:, cut:])
    hidden = lm(inputs_embeds=embeds, attention_mask=mask, cache=cache, use_cache=True).last_hidden_state
    return model.lm_head(hidden), cut


def logits_from_features(model, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's logits [B, L, V] with cached vision ``features`` [B, K, D] (what LLaVA's forward
    computes from the pixels: the projector's output written at the image tokens)."""
    embeds = _with_image(model, ids, features)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return model.lm_head(hidden)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the labelled tokens, each predicted from the position before it: the mean
    over each question's answer tokens, then over the questions. Each question weighs the same: a
    mean over all tokens would give a caption (about 10 tokens) ten times a one-word answer's weight,
    and the one-word questions, which need the image most, would be learnt last."""
    target = labels[:, 1:]
    tokens = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
    counted = (target != -100).float()
    return ((tokens * counted).sum(1) / counted.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def greedy_answers(model, tokenizer, features: torch.Tensor, questions: list[Question], max_new: int = 20) -> list:
    """Greedy answers (strings) to ``questions`` about the scenes of ``features`` [B, K, D]."""
    k = features.shape[1]
    rows = [prompt_ids(tokenizer, q, k) for q in questions]
    done = [False] * len(rows)
    answers: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new):
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), tokenizer.pad_token_id)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        mask = (torch.arange(length)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        logits = logits_from_features(model, features, ids, mask)
        # an image placeholder as an answer token would ask for a second image (an untrained model may pick it)
        logits[..., model.config.image_token_id] = float("-inf")
        for b, r in enumerate(rows):
            token = int(logits[b, len(r) - 1].argmax())
            if not done[b]:
                done[b] = token == tokenizer.eos_token_id
                answers[b] += [] if done[b] else [token]
            r.append(token)
        if all(done):
            break
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]


def accuracy(model, tokenizer, features: torch.Tensor, items: list, seed: int) -> dict[str, float]:
    """Greedy exact-match accuracy per question kind: one question of each kind per scene (where it can be asked)."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind in QUESTION_KINDS:
        asked = [(i, q) for i, s in enumerate(items) if (q := make_question(s, kind, rng)) is not None]
        if not asked:
            continue
        idx = torch.tensor([i for i, _ in asked])
        got = greedy_answers(model, tokenizer, features[idx], [q for _, q in asked])
        out[kind] = sum(g == q.answer for g, (_, q) in zip(got, asked, strict=True)) / len(asked)
    return out


def warm_start(model, folder: Path) -> None:
    """The projector's and the language model's weights from a saved shapes-vqa ``folder`` (the
    vision tower stays the shapes CLIP's); a folder whose weights do not fit is an error."""
    from transformers import LlavaForConditionalGeneration

    saved = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)  # its key names, as saved
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith(VISION_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(VISION_PREFIX) for k in missing):
        raise ValueError(f"{folder}: not a shapes-vqa model of this shape ({len(missing)} missing, {unexpected[:3]})")


def _schedule(config: VQAConfig, step: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(model, tokenizer, features: torch.Tensor, items: list, config: VQAConfig, progress: bool = True) -> list:
    """Train the projector and the language model (the vision tower stays frozen); the loss curve."""
    from tqdm import tqdm

    params = [p for n, p in model.named_parameters() if not n.startswith(VISION_PREFIX)]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(config, s))
    rng = np.random.default_rng(config.seed)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="training", disable=not progress)
    for _ in bar:
        if config.time_limit and time.perf_counter() - start > config.time_limit:
            break
        pairs = draw_questions(items, rng, config.batch_size // config.per_scene, config.per_scene, config.kinds)
        ids, mask, labels = make_batch(tokenizer, pairs, features.shape[1])
        index = torch.tensor([i for i, _ in pairs[:: config.per_scene]])
        logits, cut = shared_prefix_logits(model, features[index], ids, mask)
        loss = answer_loss(logits, labels[:, cut:])  # the labels before ``cut`` are all -100
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def export(model, processor, out: Path, record: dict) -> Path:
    """Write the model directory ``out`` (a new folder, renamed into place when complete)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(VISION_PREFIX)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, state_dict=state)
        processor.save_pretrained(tmp)
        (tmp / "m2ib.json").write_text(json.dumps(record, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run(config: VQAConfig, out: Path, progress: bool = True, command: str = "") -> dict:
    """Build, cache the features, train, measure on the validation scenes, export to ``out``; the record."""
    start = time.perf_counter()
    model, processor = build(config)
    if config.init:
        warm_start(model, Path(config.init))
    train_items, val_items = scenes("train", config.scenes, config.seed), scenes("val", config.val_scenes)
    features = image_features(model, processor, train_items, progress=progress)
    val_features = image_features(model, processor, val_items, progress=progress)
    losses = train(model, processor.tokenizer, features, train_items, config, progress)
    training: dict[str, Any] = {
        "command": command,
        "config": asdict(config),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps_done": len(losses),
        "final_loss": losses[-1],
        "mean_loss_last_50": float(np.mean(losses[-50:])),
        "loss_curve": {i + 1: round(losses[i], 5) for i in range(0, len(losses), max(1, len(losses) // 20))},
        "val_accuracy": accuracy(model, processor.tokenizer, val_features, val_items, config.seed + 1),
    }
    if config.init:  # the run it started from, so that the whole training is on record
        training["init_record"] = json.loads((Path(config.init) / "m2ib.json").read_text())["training"]
    record = {
        "name": "shapes-vqa",
        "prompt": PROMPT,
        "vision_tower_from": {"model": "shapes", "sha256": sha256(SHAPES_DIR / "model.safetensors")},
        "training": training,
    }
    export(model, processor, out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m2ib.training.vqa", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder for the model (must not exist)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds): checks the pipeline only")
    parser.add_argument("--no-progress", action="store_true")
    for field, default in asdict(VQAConfig()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"m2ib: {out} exists: give a new folder", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"m2ib: {out.parent} is not a folder", file=sys.stderr)
        return 2
    given = {f: getattr(args, f) for f in asdict(VQAConfig()) if getattr(args, f) is not None}
    config = replace(QUICK if args.quick else VQAConfig(), **given)
    try:
        kind_weights(config.kinds)
    except ValueError as exc:
        print(f"m2ib: {exc}", file=sys.stderr)
        return 2
    command = "python -m m2ib.training.vqa " + " ".join(argv if argv is not None else sys.argv[1:])
    record = run(config, out, progress=not args.no_progress, command=command)
    print(json.dumps(record["training"]["val_accuracy"]))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
