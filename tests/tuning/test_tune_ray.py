"""m2ib tune --ray: the same records and the same choice as the local run, and a Ray run resumes a
local run's folder without redoing or repeating a point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from m2ib.evaluation.distributed import RAY_ENV

for _key, _value in RAY_ENV.items():  # before Ray is imported (see RAY_ENV)
    os.environ.setdefault(_key, _value)

ray = pytest.importorskip("ray")

from m2ib.evaluation.distributed import RayConfig  # noqa: E402
from m2ib.tuning.tune import TuneRequest, tune  # noqa: E402

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]  # a Ray start takes tens of seconds on 2 cores

STORE = 80 * 2**20


def _request(out: Path, ray_config: RayConfig | None = None) -> TuneRequest:
    return TuneRequest(
        model="random-tiny",
        data="shapes:val:3",
        out=out,
        layers={"image": (2,), "text": (1,)},
        betas=(0.1, 10.0),
        variants=("published", "standardised"),
        progress=False,
        ray=ray_config,
    )


def _lines(out: Path) -> list[str]:
    return (out / "points.jsonl").read_text().splitlines()


def _records(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, _lines(out)[1:])}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    tune(_request(out))
    return out


@pytest.fixture()
def no_ray_left():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_run_resumes_a_local_run_and_adds_the_local_runs_points(local_run, tmp_path, no_ray_left):
    # A local run's folder cut to its run line and first 3 points: the Ray run keeps those lines as
    # they are, adds every other point once, and each added point equals the local run's.
    out = tmp_path / "part"
    out.mkdir()
    kept = _lines(local_run)[:4]
    (out / "points.jsonl").write_text("\n".join(kept) + "\n")
    tune(_request(out, RayConfig(actors=2, object_store_memory=STORE)))
    assert not ray.is_initialized(), "tune --ray must shut down the Ray it started"
    lines = _lines(out)
    assert lines[:4] == kept
    keys = [json.loads(x)["key"] for x in lines[1:]]
    local, distributed = _records(local_run), _records(out)
    assert len(keys) == len(set(keys)) == len(local) == 2 * 2 + 2 * 2  # 2 variants x 2 betas, 1 layer per tower
    for key, want in local.items():
        got = distributed[key]
        assert got["settings"] == want["settings"]
        for name, value in want["criteria"].items():
            assert got["criteria"][name] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), (key, name)
    chosen = json.loads((out / "m2ib.json").read_text())["recommended"]
    assert chosen == json.loads((local_run / "m2ib.json").read_text())["recommended"]
