"""A small, fully offline CLIP tokenizer built from a word list.

CLIP's tokenizer is a byte-level BPE. We build one whose vocabulary is CLIP's 512 byte
tokens plus one token per listed word, with the merges that assemble each word left to
right. Any text still tokenizes (unknown words fall back to characters), and every listed
word is exactly one token, which makes token-level attributions easy to read. The shipped
and the random demo models use it; real checkpoints bring their own tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest are shifted.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair of lowest rank."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def word_vocabulary(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and BPE merges that make each of ``words`` (lower-case letters) one token.

    Each word is first encoded with the merges made so far (which may split it, e.g. "an"
    inside "orange"); merges joining those pieces left to right are then appended. Appended
    merges rank below every earlier one, so words already whole stay whole.
    """
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.strip().lower() for w in words if w.strip()}):
        if not word.isalpha() or not word.isascii():
            raise ValueError(f"tokenizer words must be ASCII letters, got {word!r}")
        pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(f"{pair[0]} {pair[1]}")
            pieces = _apply_merges(pieces, ranks)
            vocab.setdefault(pieces[0], len(vocab))
        vocab.setdefault(pieces[0], len(vocab))
    vocab[START_TOKEN] = len(vocab)
    vocab[END_TOKEN] = len(vocab)
    return vocab, merges


def save_word_tokenizer(words: Iterable[str], directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a word tokenizer into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = word_vocabulary(words)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": START_TOKEN, "eos_token": END_TOKEN, "unk_token": END_TOKEN, "pad_token": END_TOKEN}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def build_word_tokenizer(words: Iterable[str]):
    """A ``transformers`` CLIP tokenizer whose vocabulary holds ``words`` as single tokens."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        save_word_tokenizer(words, tmp)
        return CLIPTokenizer.from_pretrained(tmp)


def vocabulary_size(words: Iterable[str]) -> int:
    return len(word_vocabulary(words)[0])
