"""The words side of an audit: token scores merged into words, then one row per word over the data.

A pair's *word share* is how much of the pair's text attribution a word holds: the mean of its
sub-tokens' raw scores (negative scores count as 0) over the sum of these means for all the pair's
words (start/end tokens left out), so the shares of a pair add up to 1 and pairs of any length and
score scale can be averaged. The mean, as in the figures (:meth:`m2ib.Explanation.display_words`):
a sum would give a word split into many pieces (a rare word, a typo) a large share for its length. The *top word* of a pair is the word with the largest share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# A word is a run of letters/digits (with inner apostrophes), or a run of other visible characters.
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
_MARKERS = ("</w>", "▁", "Ġ", "##")

#: A word counts as "everywhere" when it is in at least this share of the pairs.
EVERYWHERE = 0.5
#: ... and is flagged when it holds at least this many times its fair share (1 / words in the pair).
EVERYWHERE_LIFT = 1.5
#: A word is flagged "top too often" when it is the top word in at least this share of its pairs ...
TOP_SHARE = 0.5
#: ... and that is at least this many times what chance gives (1 / words in each of its pairs).
TOP_LIFT = 2.0
#: Words in fewer pairs than this are never flagged (too few to tell).
MIN_COUNT = 5


def _clean(token: str) -> str:
    for marker in _MARKERS:
        token = token.replace(marker, "")
    return token.strip().lower()


def merge_words(text: str, tokens: Sequence[str], special: Sequence[int]) -> list[tuple[str, list[int]]]:
    """(word, indices of its tokens) for each word of ``text`` that has tokens, lower-cased.

    Tokens are matched to the text's characters (spaces skipped); a token that does not match
    (a tokenizer that normalises the text) makes every token its own word, so nothing is lost.
    Words cut off by the context length have no tokens and are left out.
    """
    spans = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    letters = [(i, c) for i, c in enumerate(text.lower()) if not c.isspace()]
    owner = {}
    for w, (_, start, end) in enumerate(spans):
        for i in range(start, end):
            owner[i] = w
    special_set = set(special)
    cursor = 0
    found: dict[int, list[int]] = {}  # word -> its tokens
    for j, token in enumerate(tokens):
        if j in special_set:
            continue
        piece = _clean(token).replace(" ", "")
        chunk = "".join(c for _, c in letters[cursor : cursor + len(piece)])
        if not piece:
            continue
        if chunk != piece:
            return [(_clean(t), [j]) for j, t in enumerate(tokens) if j not in special_set and _clean(t)]
        found.setdefault(owner[letters[cursor][0]], []).append(j)
        cursor += len(piece)
    return [(spans[w][0], idx) for w, idx in sorted(found.items())]


def word_shares(
    text: str, tokens: Sequence[str], special: Sequence[int], scores: Sequence[float]
) -> list[tuple[str, float]]:
    """(word, share) for each word of the pair; shares add up to 1 (equal when every score is 0)."""
    merged = merge_words(text, tokens, special)
    if not merged:
        return []
    mass = torch.tensor(
        [sum(max(float(scores[j]), 0.0) for j in idx) / len(idx) for _, idx in merged], dtype=torch.float64
    )
    total = float(mass.sum())
    share = mass / total if total > 0 else torch.full_like(mass, 1.0 / len(merged))
    return [(word, float(s)) for (word, _), s in zip(merged, share)]


@dataclass
class WordRow:
    word: str
    count: int  # pairs whose text holds the word
    mean_share: float  # its mean share of the pair's text attribution, over those pairs
    fair_share: float  # the mean of 1 / (words in the pair) over those pairs: what an even split gives
    top_count: int  # pairs where it is the top word
    top_share: float  # top_count / count
    in_pairs: float  # count / pairs with a text map
    flag: str  # why it is suspect ("" when it is not): reasons the control does not share (m2ib.auditing.control)
    control_mean_share: float | None = None  # its mean share under the control (None: no control measured)
    control_top_share: float | None = None
    control_flag: str = ""  # the reasons the control's own table flags it for
    artefact: str = ""  # the model's reasons the control flags it for too: a method artefact, not a finding

    def as_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "count": self.count,
            "mean_share": round(self.mean_share, 6),
            "fair_share": round(self.fair_share, 6),
            "top_count": self.top_count,
            "top_share": round(self.top_share, 6),
            "in_pairs": round(self.in_pairs, 6),
            "flag": self.flag,
            "method_artefact": self.artefact,
            "control_mean_share": None if self.control_mean_share is None else round(self.control_mean_share, 6),
            "control_top_share": None if self.control_top_share is None else round(self.control_top_share, 6),
            "control_flag": self.control_flag,
        }


def pair_words(record: dict[str, Any]) -> list[tuple[str, float]]:
    """A stored pair record's (word, share) list; [] when its text side was not explained."""
    if record.get("token_scores") is None:
        return []
    return word_shares(record["text"], record["tokens"], record["special"], record["token_scores"])


def top_word(shares: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The word with the largest share (the first one on ties), or ("", nan)."""
    if not shares:
        return "", float("nan")
    return max(shares, key=lambda ws: ws[1])


def word_table(per_pair: Sequence[Sequence[tuple[str, float]]]) -> list[WordRow]:
    """One row per word over the pairs (each pair's (word, share) list), most-flagged, then by mean share.

    A word that occurs twice in a pair counts once there, with the sum of its shares.
    """
    explained = [p for p in per_pair if p]
    sums: dict[str, tuple[int, float, float, int]] = {}  # count, share sum, fair sum, top count
    for shares in explained:
        merged: dict[str, float] = {}
        for word, share in shares:
            merged[word] = merged.get(word, 0.0) + share
        best = top_word(list(merged.items()))[0]
        for word, share in merged.items():
            count, total, fair, top = sums.get(word, (0, 0.0, 0.0, 0))
            sums[word] = (count + 1, total + share, fair + 1.0 / len(merged), top + int(word == best))
    rows = []
    for word, (count, share, fair, top) in sums.items():
        row = WordRow(word, count, share / count, fair / count, top, top / count, count / len(explained), "")
        row.flag = flag_word(row)
        rows.append(row)
    rows.sort(key=lambda r: (r.flag == "", -r.mean_share * r.count, r.word))
    return rows


def flag_word(row: WordRow) -> str:
    """Why a word carries the match too often: 'everywhere' (in most pairs, holding well over its
    fair share: a constant prefix or a function word) and/or 'top too often' (the top word far more
    often than chance). Empty for words in fewer than MIN_COUNT pairs."""
    if row.count < MIN_COUNT:
        return ""
    reasons = []
    if row.in_pairs >= EVERYWHERE and row.mean_share >= EVERYWHERE_LIFT * row.fair_share:
        reasons.append("everywhere")
    if row.top_share >= TOP_SHARE and row.top_share >= TOP_LIFT * row.fair_share:
        reasons.append("top too often")
    return "; ".join(reasons)
