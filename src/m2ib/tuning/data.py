"""The tune data as model inputs, computed once: batches, embeddings, and the ground truth the
rows carry (masks or boxes for the image side, relevant word spans for the text side)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backends.base import Backend, ImageBatch, TextBatch
from ..datasets.tables import PairTable, Row
from ..errors import InputError
from ..evaluation.pairs import readable_rows
from ..fileio import atomic_write_text
from ..metrics.common import pair_seed, scoring, unit_embeddings, word_positions
from ..metrics.localisation import ground_truth_mask, relevant_tokens
from .grid import REFERENCE_ROWS

MIN_PAIRS = 2


@dataclass
class TuneData:
    """N readable pairs with what every criterion needs."""

    rows: list[Row]
    images: ImageBatch
    texts: TextBatch
    image_emb: torch.Tensor  # [N, E] unit norm
    text_emb: torch.Tensor  # [N, E] unit norm
    masks: list[torch.Tensor | None]  # per pair, its ground-truth mask at the input size
    relevant: list[list[int] | None]  # per pair, its relevant word tokens (positions)
    words: list[list[int]]  # per pair, its word tokens (start and end left out)
    seeds: list[int]  # per pair, the seed of its random tie-breaks
    bad: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.rows)


def tune_data(backend: Backend, rows: list[Row], seed: int) -> TuneData:
    """Read the rows' images (an unreadable one is left out and counted), tokenise, embed."""
    good, pictures, bad = readable_rows(rows)
    if len(good) < MIN_PAIRS:
        raise InputError(f"--data: {len(good)} readable pair(s); tune needs {MIN_PAIRS} or more")
    device = backend.device
    images = backend.preprocess_images(pictures, [r.source for r in good]).to(device)
    texts = backend.tokenize([r.text for r in good]).to(device)
    with scoring(backend):
        image_emb = unit_embeddings(backend, "image", images)
        text_emb = unit_embeddings(backend, "text", texts)
    masks = [ground_truth_mask(backend, r, p.size) for r, p in zip(good, pictures)]
    words = [word_positions(texts, i) for i in range(len(good))]
    relevant = [relevant_tokens(backend, r.text, r.relevant) if r.relevant else None for r in good]
    seeds = [pair_seed(seed, r.id) for r in good]
    return TuneData(good, images, texts, image_emb, text_emb, masks, relevant, words, seeds, bad)


_SHAPES = re.compile(r"^(shapes|shapes-collage|shapes-two):(train|val|test):(\d+)(:\w+)?$")


def reference_spec(spec: str, table: PairTable, out: Path) -> str:
    """A dataset spec of the tune data's first :data:`REFERENCE_ROWS` rows (in the source's order),
    for the standardised bottleneck's statistics: ``shapes:SPLIT:64[:KIND]`` for shapes data, else a
    pairs file written to ``out/reference.tsv`` (absolute image paths)."""
    match = _SHAPES.match(spec.strip())
    if match and match.group(1) == "shapes":
        n = min(int(match.group(3)), REFERENCE_ROWS)
        return f"shapes:{match.group(2)}:{n}{match.group(4) or ''}"
    if match:
        raise InputError(f"--data {spec}: the standardised bottleneck needs shapes:... or a pairs file here")
    rows = [r for r in table.rows if isinstance(r.image, (str, Path))][:REFERENCE_ROWS]
    lines = ["image\ttext"] + [f"{Path(r.image).resolve()}\t{_one_line(r.text)}" for r in rows]
    return str(atomic_write_text(out / "reference.tsv", "\n".join(lines) + "\n"))


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())
