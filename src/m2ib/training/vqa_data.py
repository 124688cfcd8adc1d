"""Questions and answers about shapes-world scenes, and the word-level tokenizer of shapes-vqa.

Every question is asked in one fixed prompt format, :data:`PROMPT`::

    USER: <image>
    {question} ASSISTANT:

and the answer follows it directly, ended by ``</s>``. Four kinds (:data:`QUESTION_KINDS`), each
made from the scene's own objects and asked only where its answer is unique:

* ``colour``: "what colour is the star ?" -> "red" (the scene has exactly one star);
* ``shape``: "what shape is red ?" -> "star" (exactly one red object);
* ``exists``: "is there a blue circle ?" -> "yes" / "no" (half each; half of the "no" questions
  pair a colour and a shape that are both in the scene, on different objects);
* ``caption``: "describe the image ." -> every object in the captions' wording, in the
  vocabulary's order (colours as ``COLOURS`` lists them, then shapes as ``SHAPES``): "a red
  circle, a blue star and an orange cross". A fixed order makes the caption one right answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..datasets.shapes import COLOURS, SHAPES, Scene, phrase

PROMPT = "USER: <image>\n{question} ASSISTANT:"
QUESTION_KINDS = ("colour", "shape", "exists", "caption")
SPECIAL = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
# Every word of a prompt or an answer; punctuation is split off by the tokenizer.
WORDS = (
    ("user", "assistant", "what", "colour", "shape", "is", "the", "there", "describe", "image")
    + ("a", "an", "and", "yes", "no", ":", "?", ".", ",")
    + tuple(COLOURS)
    + SHAPES
)


@dataclass(frozen=True)
class Question:
    """One question about a scene: its ``kind``, text, expected answer and the object it names
    (``target``: an index into ``scene.objects``, or -1 when it names none or an absent one)."""

    kind: str
    question: str
    answer: str
    target: int = -1

    @property
    def prompt(self) -> str:
        return PROMPT.format(question=self.question)


def caption_of(scene: Scene) -> str:
    """Every object of ``scene`` in the vocabulary's order, in the captions' wording."""
    colours, shapes = list(COLOURS), list(SHAPES)
    order = sorted(scene.objects, key=lambda o: (colours.index(o.colour), shapes.index(o.shape)))
    parts = [phrase(o.colour, o.shape) for o in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _unique(scene: Scene, attribute: str) -> list[int]:
    values = [getattr(o, attribute) for o in scene.objects]
    return [i for i, v in enumerate(values) if values.count(v) == 1]


def _exists(scene: Scene, rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        i = int(rng.integers(len(scene.objects)))
        o = scene.objects[i]
        return Question("exists", f"is there {phrase(o.colour, o.shape)} ?", "yes", i)
    present = set(scene.pairs)
    colours = {o.colour for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    swapped = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    others = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    pool = swapped if swapped and rng.random() < 0.5 else others
    c, s = pool[int(rng.integers(len(pool)))]
    return Question("exists", f"is there {phrase(c, s)} ?", "no")


def make_question(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    """A ``kind`` question about ``scene`` drawn with ``rng``; None when the scene has no object
    whose answer would be unique (``colour``, ``shape``)."""
    if kind == "caption":
        return Question("caption", "describe the image .", caption_of(scene))
    if kind == "exists":
        return _exists(scene, rng)
    if kind not in ("colour", "shape"):
        raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")
    candidates = _unique(scene, "shape" if kind == "colour" else "colour")
    if not candidates:
        return None
    i = candidates[int(rng.integers(len(candidates)))]
    o = scene.objects[i]
    if kind == "colour":
        return Question("colour", f"what colour is the {o.shape} ?", o.colour, i)
    return Question("shape", f"what shape is {o.colour} ?", o.shape, i)


def build_tokenizer():
    """The word-level tokenizer of shapes-vqa (lower-cased; punctuation split off; no special
    token added around a text: the answer's tokens follow the prompt's directly)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # words joined by spaces, " ," -> ","
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )


__all__ = ["PROMPT", "QUESTION_KINDS", "WORDS", "Question", "build_tokenizer", "caption_of", "make_question"]
