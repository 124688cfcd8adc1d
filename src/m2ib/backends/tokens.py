"""Token ids as people read them: text in any script, words, and user text that never turns into
special tokens.

Tokenizers store pieces in their own alphabets: byte-level BPE (CLIP, OpenCLIP, OpenAI clip) maps
every byte to a printable stand-in (``ä ¸ Ģ`` are the three bytes of 一), SentencePiece marks a
word start with ``▁`` and may fall back to ``<0xE4>`` byte pieces, WordPiece continues a word
with ``##``. :func:`readable_tokens` decodes the bytes across pieces, so a character split over
three pieces is shown once, on the piece that completes it; :func:`word_ids` says which word each
piece belongs to, so figures can show words.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Collection, Sequence

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback
END_OF_WORD = "</w>"  # CLIP's BPE marks a word's last piece
WORD_START = "\u2581"  # SentencePiece marks a word's first piece
CONTINUES = "##"  # WordPiece marks a word's later pieces


@functools.cache
def byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's layout: the
    printable Latin-1 bytes stand for themselves, the other 68 bytes for characters from 256 on)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def piece_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level or byte-fallback piece stands for; None for a piece in plain text."""
    match = _BYTE_PIECE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    body = piece[: -len(END_OF_WORD)] if piece.endswith(END_OF_WORD) else piece
    table = byte_decoder()
    if body and all(c in table for c in body):
        return bytes(table[c] for c in body)
    return None


def readable_tokens(pieces: Sequence[str], special: Collection[int] = ()) -> tuple[str, ...]:
    """Each piece as the text it completes: bytes decoded as UTF-8 across pieces (a piece in the
    middle of a character reads ""), word markers removed, special pieces (indices in
    ``special``) kept as they are, invisible control characters shown as their escape."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for j, piece in enumerate(pieces):
        if j in special:
            out.append(piece)
            continue
        raw = piece_bytes(piece.replace(WORD_START, ""))
        text = decoder.decode(b"", final=True) + piece if raw is None else decoder.decode(raw)
        text = text.replace(END_OF_WORD, "").replace(WORD_START, " ").removeprefix(CONTINUES)
        out.append(_visible(text.strip() if text.strip() else text))
    return tuple(out)


def _visible(text: str) -> str:
    """Control characters (NUL, bell, tab, ...) as escapes: they draw as nothing or as boxes."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def word_ids(pieces: Sequence[str], special: Collection[int] = ()) -> tuple[int, ...]:
    """Per piece, the index of the word it belongs to (-1 for special pieces), read from the
    tokenizer's word markers: ``</w>`` ends a word (CLIP's BPE), ``▁`` starts one (SentencePiece),
    ``##`` continues one (WordPiece). A tokenizer with no markers gives every piece its own word."""
    plain = [p for j, p in enumerate(pieces) if j not in special]
    if any(p.endswith(END_OF_WORD) for p in plain):

        def starts(piece: str, previous: str | None) -> bool:
            return previous is None or previous.endswith(END_OF_WORD)
    elif any(p.startswith(WORD_START) for p in plain):

        def starts(piece: str, previous: str | None) -> bool:
            return previous is None or piece.startswith(WORD_START)
    elif any(p.startswith(CONTINUES) for p in plain):

        def starts(piece: str, previous: str | None) -> bool:
            return previous is None or not piece.startswith(CONTINUES)
    else:

        def starts(piece: str, previous: str | None) -> bool:
            return True

    ids, word, previous = [], -1, None
    for j, piece in enumerate(pieces):
        if j in special:
            ids.append(-1)
            previous = None
            continue
        word += starts(piece, previous)
        ids.append(word)
        previous = piece
    return tuple(ids)


def protect_specials(text: str, specials: Collection[str]) -> str:
    """``text`` with every special-token string a user typed broken by a space after its first
    character, so a tokenizer reads it as plain characters (a typed ``<|endoftext|>`` must not end
    the text early and move the pooled position)."""
    for special in sorted(specials, key=len, reverse=True):
        if len(special) > 1 and special in text:
            text = text.replace(special, f"{special[0]} {special[1:]}")
    return text


def short(text: str, n: int = 40) -> str:
    """``text`` cut to ``n`` characters for a message (``...`` marks the cut)."""
    return text if len(text) <= n else text[: n - 3] + "..."
