"""The records of a tune run: ``DIR/points.jsonl``, one synced line per finished grid point.

The first line is the run's identity (model, data, rows, seed, the grid); each later line one
point's criteria. A killed run loses at most the points in flight (one layer's betas of one
variant, fitted together); a torn last line is cut off before the next append. A run whose
identity differs from the one in ``DIR`` is refused on one line: another grid goes to another DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError

RECORDS = "points.jsonl"
VERSION = 1


class Store:
    """Append-only records in ``folder/points.jsonl`` (open it with :func:`open_store`)."""

    def __init__(self, path: Path, identity: dict[str, Any], points: dict[str, dict[str, Any]]):
        self.path, self.identity, self.points = path, identity, points

    def append(self, record: dict[str, Any]) -> None:
        """Write one point's record and flush it to disk before returning."""
        line = json.dumps({"kind": "point", **record}, sort_keys=True, allow_nan=True) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.points[record["key"]] = record


def _lines(path: Path) -> list[dict[str, Any]]:
    """The complete records; a torn last line (a kill mid-write) is cut off the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    out = []
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {number} is not a record; use another --out") from None
    return out


def open_store(folder: Path, identity: dict[str, Any]) -> Store:
    """The run's records in ``folder``: new, or the finished points of the same run to resume."""
    path = folder / RECORDS
    identity = {"version": VERSION, **identity}
    if not path.exists() or path.stat().st_size == 0:
        header = json.dumps({"kind": "run", **identity}, sort_keys=True) + "\n"
        with path.open("w", encoding="utf-8") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        return Store(path, identity, {})
    records = _lines(path)
    if not records or records[0].get("kind") != "run":
        raise InputError(f"--out {folder}: {path.name} is not a tune run's record; use another --out")
    old = {k: v for k, v in records[0].items() if k != "kind"}
    if old != identity:
        differ = ", ".join(sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k)))
        raise InputError(
            f"--out {folder} holds a tune run with another {differ}; re-run with its flags to resume, or use another --out"
        )
    return Store(path, identity, {r["key"]: r for r in records[1:] if r.get("kind") == "point"})
