"""An audit's files besides the report: ``words.csv``, ``regions.csv``, ``pairs.csv`` and
``image_prior.npz``, each written atomically (a crash never leaves half a file)."""

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

WORD_COLUMNS = (
    "word",
    "count",
    "mean_share",
    "fair_share",
    "top_count",
    "top_share",
    "in_pairs",
    "flag",
    "method_artefact",
    "control_mean_share",
    "control_top_share",
    "control_flag",
)
REGION_COLUMNS = (
    "region",
    "where",
    "patches",
    "row0",
    "col0",
    "row1",
    "col1",
    "mass",
    "even_share",
    "flag",
    "method_artefact",
    "control_mass",
)
#: A region's reason: the mean map singles it out (a spatial prior, or a shortcut).
REGION_FLAG = "spatial prior"


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


def region_rows(summary: Summary) -> list[dict[str, Any]]:
    """One row per region of the mean map; ``flag`` moves to ``method_artefact`` when the control's
    mean map singles the region out too (:func:`m2ib.auditing.control.judge`)."""
    if summary.prior is None:
        return []
    grid = (summary.prior.shape[0], summary.prior.shape[1])
    rows = []
    for r in summary.regions:
        patches = int(r.mask.sum())
        rows.append(
            {
                "region": r.name,
                "where": r.where(grid),
                "patches": patches,
                **dict(zip(("row0", "col0", "row1", "col1"), r.box)),
                "mass": round(r.mass, 6),
                "even_share": round(patches / summary.prior.numel(), 6),
                "flag": "" if r.artefact else REGION_FLAG,
                "method_artefact": REGION_FLAG if r.artefact else "",
                "control_mass": None if r.control_mass is None else round(r.control_mass, 6),
            }
        )
    return rows


def write_outputs(out: Path, summary: Summary) -> dict[str, Path]:
    """Write the files into ``out``; returns their paths by name (no npz without image maps)."""
    files = {
        "words": atomic_write_text(out / "words.csv", csv_text([w.as_dict() for w in summary.words], WORD_COLUMNS)),
        "regions": atomic_write_text(out / "regions.csv", csv_text(region_rows(summary), REGION_COLUMNS)),
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
