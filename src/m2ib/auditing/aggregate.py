"""From an audit's stored pair records to the dataset-level answers: the word table, the image
prior and its regions, and one row of numbers per pair (pure: records in, tensors and rows out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .control import judge
from .image import Region, concentration, dataset_prior, hot_regions, mass_in, patch_mass
from .words import WordRow, pair_words, top_word, word_table


@dataclass
class Summary:
    """What an audit found. ``pairs`` follow the records' order; ``typical`` ranks them."""

    words: list[WordRow]
    pairs: list[dict[str, Any]]  # one row per pair (pairs.csv)
    prior: torch.Tensor | None  # [R, C] mean mass (None: no image side explained)
    regions: list[Region]
    masses: torch.Tensor | None  # [N_image, R, C] each explained pair's mass, in the order of ``imaged``
    imaged: list[str]  # row ids that have a mass, in order
    control: Summary | None = None  # the same pairs under the control (m2ib.auditing.control); None: no control

    @property
    def rank_by(self) -> str:
        """What makes a pair typical: its mass in the prior's regions, or (no region) its concentration."""
        return "region_mass" if self.regions else "concentration"

    def typical(self) -> list[dict[str, Any]]:
        """Pairs with an image map, most typical first (see :attr:`rank_by`); ties in table order."""
        rows = [p for p in self.pairs if p.get(self.rank_by) is not None]
        return sorted(rows, key=lambda p: -p[self.rank_by])


def summarise(records: Sequence[dict[str, Any]]) -> Summary:
    """Aggregate the pair records of one audit (see :mod:`m2ib.auditing.words` and :mod:`m2ib.auditing.image`);
    when the records carry the control's maps (``"control"``), the same under the control, and the
    findings the control shares marked as method artefacts (:func:`m2ib.auditing.control.judge`)."""
    summary = _summarise(records)
    if records and all(r.get("control") is not None for r in records):
        summary.control = _summarise([{**r, **r["control"]} for r in records])
        judge(summary.words, summary.regions, summary.control.words, summary.control.prior)
    return summary


def _summarise(records: Sequence[dict[str, Any]]) -> Summary:
    shares = [pair_words(r) for r in records]
    words = word_table(shares)
    imaged = [r for r in records if r.get("grid") is not None]
    masses: torch.Tensor | None = None  # [N_image, R, C]
    prior: torch.Tensor | None = None
    union: torch.Tensor | None = None  # [R, C] bool: the regions' patches
    regions: list[Region] = []
    if imaged:
        masses = torch.stack([patch_mass(torch.tensor(r["grid"], dtype=torch.float64)) for r in imaged])
        prior = dataset_prior(masses)
        regions = hot_regions(prior)
        union = torch.zeros_like(prior, dtype=torch.bool)
        for region in regions:
            union |= region.mask
    by_row = {r["row"]: k for k, r in enumerate(imaged)}
    pairs = []
    for record, pair_shares in zip(records, shares):
        word, share = top_word(pair_shares)
        row: dict[str, Any] = {
            "row": record["row"],
            "image": record["image"],
            "text": record["text"],
            "similarity": record["similarity"],
            "top_word": word,
            "top_word_share": None if not pair_shares else round(share, 6),
        }
        k = by_row.get(record["row"])
        mass = None if k is None or masses is None else masses[k]
        row["concentration"] = None if mass is None else round(concentration(mass), 6)
        row["region_mass"] = (
            None if mass is None or union is None or not regions else round(float(mass_in(mass, union)), 6)
        )
        for region in regions:
            row[f"mass_{region.name}"] = None if mass is None else round(float(mass_in(mass, region.mask)), 6)
        pairs.append(row)
    summary = Summary(words, pairs, prior, regions, masses, [r["row"] for r in imaged])
    for rank, p in enumerate(summary.typical(), 1):
        p["typical_rank"] = rank
    return summary
