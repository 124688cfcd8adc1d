"""Readable tokens in any script, words for display, and typed special tokens that stay text."""

from __future__ import annotations

import warnings

import pytest
import torch

import m2ib
from m2ib.backends.tokens import byte_decoder, piece_bytes, protect_specials, readable_tokens, word_ids
from m2ib.explanation import Explanation


def _byte_pieces(text: str) -> list[str]:
    """The byte-level pieces a BPE with no merges makes of ``text`` (one byte each, '</w>' last)."""
    encoder = {b: c for c, b in byte_decoder().items()}
    pieces = [encoder[b] for b in text.encode("utf-8")]
    pieces[-1] += "</w>"
    return pieces


def test_byte_table_is_a_bijection_over_all_bytes():
    table = byte_decoder()
    assert sorted(table.values()) == list(range(256)) and len(table) == 256
    assert table["a"] == ord("a") and table["Ā"] == 0  # printable bytes stand for themselves


@pytest.mark.parametrize("text", ["一只", "🐱", "héllo", "a"])
def test_characters_split_over_byte_pieces_are_decoded_once(text):
    pieces = _byte_pieces(text)
    shown = readable_tokens(pieces)
    assert "".join(shown) == text
    assert all(s in ("", *text) or s == text for s in shown)  # a piece shows whole characters or nothing
    assert word_ids(pieces) == (0,) * len(pieces)


def test_markers_give_words_and_specials_stay():
    pieces = ["<|startoftext|>", "tri", "angle</w>", "a</w>", "<|endoftext|>"]
    assert word_ids(pieces, {0, 4}) == (-1, 0, 0, 1, -1)
    assert readable_tokens(pieces, {0, 4}) == ("<|startoftext|>", "tri", "angle", "a", "<|endoftext|>")
    assert word_ids(["▁a", "▁tri", "angle", "</s>"], {3}) == (0, 1, 1, -1)  # SentencePiece
    assert word_ids(["[CLS]", "tri", "##angle", "a", "[SEP]"], {0, 4}) == (-1, 0, 0, 1, -1)  # WordPiece
    assert readable_tokens(["▁cat", "<0xE4>", "<0xB8>", "<0x80>"]) == ("cat", "", "", "一")
    assert piece_bytes("▁") is None


def test_control_characters_are_shown_escaped():
    assert readable_tokens(["\x00"]) == ("\\x00",)  # '\x00' in byte-level BPE is 'Ā'
    assert readable_tokens(["Ā</w>"]) == ("\\x00",)


def test_typed_special_tokens_are_text_in_every_tokenizer(backend):
    batch = backend.tokenize(["a red <|endoftext|> circle"])
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    end = backend.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids.count(end) == 1 and ids[-1] == end  # only the real end token
    assert backend.pooled_positions("text", batch).tolist() == [len(ids) - 1]
    assert protect_specials("x <|endoftext|>", ["<|endoftext|>"]) == "x < |endoftext|>"


def test_chinese_tokens_read_as_chinese(backend):
    batch = backend.tokenize(["一只红色的圆形"])
    assert "".join(batch.tokens[0][1:-1]) == "一只红色的圆形"


def test_one_truncation_warning_for_a_long_text(backend):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.tokenize([" ".join(["red"] * 500)])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "dropped" in messages[0], messages


def test_display_merges_pieces_into_words_by_their_mean():
    raw = torch.tensor([5.0, 1.0, 2.0, 4.0, 9.0])
    exp = Explanation(
        text="triangle a",
        tokens=["<s>", "tri", "angle", "a", "</s>"],
        image=torch.zeros(3, 4, 4),
        image_map=None,
        text_map=raw / 9,
        text_map_raw=raw,
        special_tokens=(0, 4),
        word_ids=(-1, 0, 0, 1, -1),
    )
    words, shading, special = exp.display_words()
    assert words == ["<s>", "triangle", "a", "</s>"] and special == (0, 3)
    assert shading.tolist() == [0.0, 0.0, 1.0, 0.0]  # "triangle" averages 1.5 < "a" 4: min-max over the words
    exp.word_ids = ()  # without word ids: the tokens, exactly as word_shading shades them
    words, shading, _ = exp.display_words()
    assert words == exp.tokens and torch.equal(shading, exp.word_shading())


def test_a_word_split_into_many_pieces_does_not_win_by_its_length():
    """'a blue line' with *line* out of the vocabulary, split into six pieces of 1.0 each: a sum would
    give it 6 and put it on top; *blue* (one piece, 2.0) holds more evidence per piece and must win."""
    pieces = ["l", "i", "n", "e", "_", "x"]
    tokens = ["<s>", "a", "blue", *pieces, "</s>"]
    raw = torch.tensor([0.0, 0.5, 2.0, *[1.0] * len(pieces), 0.0])
    exp = Explanation(
        text="a blue line_x",
        tokens=tokens,
        image=torch.zeros(3, 4, 4),
        image_map=None,
        text_map=raw / 2,
        text_map_raw=raw,
        special_tokens=(0, len(tokens) - 1),
        word_ids=(-1, 0, 1, *[2] * len(pieces), -1),
    )
    words, shading, _ = exp.display_words()
    assert words[1:4] == ["a", "blue", "line_x"]
    assert shading[2] == 1.0 and 0.0 < shading[3] < 1.0, shading  # blue on top; line between a and blue
    record = exp.to_dict()
    assert record["words"] == words and record["word_scores"] == [round(float(v), 6) for v in shading]


def test_figure_of_a_chinese_text_warns_and_logs_nothing(backend, caplog):
    pytest.importorskip("matplotlib")
    exp = m2ib.explain(backend, torch.rand(3, 48, 48), "一只红色的圆形 🐱", steps=2, samples=2)
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("error")
        exp.figure()
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")], caplog.text


def test_figure_says_when_the_target_is_a_margin_and_when_every_word_scored_0(backend, monkeypatch):
    pytest.importorskip("matplotlib")
    import m2ib.viz.figure as figure

    subtitles = []
    monkeypatch.setattr(figure, "explanation_figure", lambda *a, **k: subtitles.append(k["subtitle"]))
    exp = m2ib.explain(backend, torch.rand(3, 48, 48), "a red circle", steps=2, samples=2, negatives=["a cat"])
    exp.figure()
    assert "margin over 1 negative text" in subtitles[-1]
    exp.text_map_raw = torch.zeros_like(exp.text_map_raw)
    exp.text_map = torch.zeros_like(exp.text_map)
    exp.figure()
    assert "every word scored 0" in subtitles[-1]
    exp.settings.pop("negatives")
    exp.text_map_raw[1] = 1.0
    exp.figure()
    assert "margin" not in subtitles[-1] and "scored 0" not in subtitles[-1]
