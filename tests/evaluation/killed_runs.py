"""Kill -9 a resumable run (``m2ib evaluate``, ``m2ib audit``) at a chosen point, and compare every
output of its re-run with an uninterrupted run's (shared by tests/evaluation and tests/auditing).

The child stops right after its ``n``-th pair record is on disk (``n = 0``: after the provenance
record, before any pair), says "paused" and waits there until it is killed: the kill lands at a known
point, however fast or loaded the machine.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

PAUSED_AFTER = """
import sys, threading
from m2ib.cli import main
from m2ib.evaluation.store import ResultsWriter

write, pairs, stop_after = ResultsWriter.write, [], int(sys.argv[1])

def write_then_pause(self, record):
    write(self, record)
    pairs.extend([record] if record.get("kind") == "pair" else [])
    if len(pairs) == stop_after:
        print("paused", flush=True)
        threading.Event().wait()

ResultsWriter.write = write_then_pause
sys.exit(main(sys.argv[2:]))
"""

#: Fields that say when and how fast a run went, not what it found: left out of the comparison.
TIMING_FIELDS = ("created", "seconds")
#: The folder lock holds the process id of the run that last held it.
NOT_OUTPUTS = (".m2ib.lock",)


def kill_after(args: list[str], pairs: int, env: dict[str, str], limit: float = 600) -> None:
    """Run ``m2ib ARGS`` until ``pairs`` pair records are written, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_AFTER, str(pairs), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], limit)
        line = proc.stdout.readline().strip() if ready else ""
        assert line == "paused", f"the run did not reach pair {pairs}: {proc.poll()=} {line!r}"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def outputs(out: Path) -> list[str]:
    """Every file of a run folder, relative, sorted (the lock left out)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in NOT_OUTPUTS)


def assert_same_outputs(cut: Path, whole: Path, rel: float = 0.0, abs: float = 0.0) -> None:
    """Every output of ``cut`` equals ``whole``'s: the same files; JSON lines the same records in the
    same order (timings left out; numbers within ``rel``/``abs``); npz the same arrays; other
    files the same bytes once each folder's path is written the same."""
    assert outputs(cut) == outputs(whole)
    for name in outputs(whole):
        a, b = cut / name, whole / name
        if name.endswith(".jsonl"):
            mine = [_timeless(json.loads(line)) for line in _text(a, cut).splitlines()]
            theirs = [_timeless(json.loads(line)) for line in _text(b, whole).splitlines()]
            assert len(mine) == len(theirs), name
            for i, (x, y) in enumerate(zip(mine, theirs)):
                _assert_close(x, y, rel, abs, f"{name} line {i + 1}")
        elif name.endswith(".npz"):
            with np.load(a) as x, np.load(b) as y:
                assert sorted(x.files) == sorted(y.files), name
                for key in x.files:
                    if x[key].dtype.kind in "fc":
                        np.testing.assert_allclose(x[key], y[key], rtol=rel, atol=abs, err_msg=f"{name}:{key}")
                    else:
                        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")
        elif name.endswith(".png"):
            assert a.read_bytes() == b.read_bytes(), name
        else:
            assert _text(a, cut) == _text(b, whole), name


def _text(path: Path, folder: Path) -> str:
    return path.read_text(encoding="utf-8").replace(str(folder), "OUT")


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _assert_close(x: Any, y: Any, rel: float, abs_: float, where: str) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _assert_close(x[k], y[k], rel, abs_, f"{where}.{k}")
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_close(u, v, rel, abs_, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        assert isinstance(x, (int, float)) and isinstance(y, (int, float)), where
        np.testing.assert_allclose(x, y, rtol=rel, atol=abs_, err_msg=where)  # NaN equals NaN
    else:
        assert x == y, where


__all__ = ["assert_same_outputs", "kill_after", "outputs"]
