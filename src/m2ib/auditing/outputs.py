"""An audit's files besides the report: ``words.csv``, ``pairs.csv`` and ``image_prior.npz``,
each written atomically (a crash never leaves half a file)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..results import save_npz
from .aggregate import Summary

WORD_COLUMNS = ("word", "count", "mean_share", "fair_share", "top_count", "top_share", "in_pairs", "flag")


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def pair_columns(summary: Summary) -> list[str]:
    regions = [f"mass_{r.name}" for r in summary.regions]
    return [
        "row",
        "image",
        "text",
        "similarity",
        "top_word",
        "top_word_share",
        "concentration",
        "region_mass",
        *regions,
        "typical_rank",
    ]


def write_outputs(out: Path, summary: Summary) -> dict[str, Path]:
    """Write the three files into ``out``; returns their paths by name (no npz without image maps)."""
    files = {
        "words": atomic_write_text(out / "words.csv", csv_text([w.as_dict() for w in summary.words], WORD_COLUMNS)),
        "pairs": atomic_write_text(out / "pairs.csv", csv_text(summary.pairs, pair_columns(summary))),
    }
    if summary.prior is not None:
        labels = np.zeros(tuple(summary.prior.shape), dtype=np.int16)  # 0: no region, k: region Rk
        for k, region in enumerate(summary.regions, 1):
            labels[region.mask.numpy()] = k
        files["prior"] = save_npz(
            out / "image_prior.npz",
            {
                "prior": summary.prior.numpy(),
                "regions": labels,
                "concentration": np.array(
                    [p["concentration"] for p in summary.pairs if p["concentration"] is not None]
                ),
                "rows": np.array(summary.imaged),
            },
        )
    return files
