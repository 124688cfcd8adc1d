"""The offline word tokenizer: every listed word is exactly one token; anything else still encodes."""

from __future__ import annotations

from m2ib.models import DEMO_WORDS
from m2ib.tokenizer import build_word_tokenizer, word_vocabulary


def test_every_listed_word_is_one_token():
    # "an" and "and" come before "orange" and "triangle": their merges must not split them
    words = list(DEMO_WORDS) + ["an", "and", "orange", "triangle", "banana", "ant", "a", "aa", "aaa"]
    tokenizer = build_word_tokenizer(words)
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # unknown words fall back to letters


def test_vocabulary_is_deterministic_and_has_special_tokens():
    v1, m1 = word_vocabulary(["red", "circle", "an"])
    v2, m2 = word_vocabulary(["circle", "an", "red", "red"])
    assert (v1, m1) == (v2, m2)
    assert list(v1)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
