"""A killed m2ib tune resumes: kill -9 a real run mid-grid, re-run, and the outputs equal an
uninterrupted run's (timings aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2ib.errors import InputError
from m2ib.tuning.store import open_store

SRC = str(Path(__file__).resolve().parents[2] / "src")
GRID = ["--model", "random-tiny", "--data", "shapes:val:3", "--layers", "0,2", "--betas", "0.1,10"]
GRID += ["--bottlenecks", "published", "--no-progress"]


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "m2ib", "tune", *GRID, "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _points(out: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (out / "points.jsonl").read_text().splitlines()[1:]]
    return {r["key"]: {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in lines}


def _settings(out: Path) -> dict:
    doc = json.loads((out / "m2ib.json").read_text())
    doc["tune"].pop("command")
    return doc


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(whole), env=_env(), check=True, capture_output=True, timeout=300)
    run = subprocess.Popen(_command(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "points.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 2:  # the run line and one point
            break
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before it could be killed"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "m2ib.json").exists()
    done = len(_points(killed))
    assert 1 <= done < 8
    before = records.read_text().splitlines()
    subprocess.run(_command(killed), env=_env(), check=True, capture_output=True, timeout=300)
    after = records.read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 1 + 8  # finished points kept, none recomputed
    assert _points(killed) == _points(whole)
    assert _settings(killed) == _settings(whole)
    assert (killed / "report.html").stat().st_size > 1000


def test_another_grid_into_the_same_folder_is_refused(tmp_path):
    store = open_store(tmp_path, {"grid": {"image": {"betas": [0.1]}}})
    store.append({"key": "a", "criteria": {}})
    with pytest.raises(InputError, match="another grid"):
        open_store(tmp_path, {"grid": {"image": {"betas": [0.1, 1.0]}}})
    assert set(open_store(tmp_path, {"grid": {"image": {"betas": [0.1]}}}).points) == {"a"}


def test_a_torn_last_line_is_cut_off(tmp_path):
    store = open_store(tmp_path, {"grid": 1})
    store.append({"key": "a", "criteria": {}})
    with (tmp_path / "points.jsonl").open("a") as f:
        f.write('{"kind": "point", "key": "b", "crit')  # a kill mid-write
    again = open_store(tmp_path, {"grid": 1})
    assert set(again.points) == {"a"}
    again.append({"key": "b", "criteria": {}})
    assert set(open_store(tmp_path, {"grid": 1}).points) == {"a", "b"}
