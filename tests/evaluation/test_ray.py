"""m2ib evaluate --ray: the same numbers as the local run on a local instance and on a two-node
cluster, nothing lost or repeated after a kill, and Ray always shut down."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2ib.evaluation.distributed import RAY_ENV

for _key, _value in RAY_ENV.items():  # before Ray is imported (see RAY_ENV)
    os.environ.setdefault(_key, _value)

ray = pytest.importorskip("ray")

import m2ib  # noqa: E402
from m2ib.datasets.tables import load_table  # noqa: E402
from m2ib.evaluation.distributed import RayConfig, run_evaluation_ray  # noqa: E402
from m2ib.evaluation.runner import read_results, run_evaluation  # noqa: E402

# Generous: on a loaded 2-core machine one Ray start alone has taken minutes (a test once hit 300 s).
# Every wait below is on a condition, with a limit well inside this one.
pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]  # Ray starts clusters: tens of seconds each

MODEL = "random-tiny"
SHAPES = "shapes:test:8"
METHODS = ["gradcam", "m2ib"]
METRICS = {"confidence": {}, "deletion": {"steps": 2}, "localisation": {}}
FAST = {"m2ib": {"steps": 2, "samples": 2}}
STORE = 80 * 2**20  # a small object store: the rows are small


@pytest.fixture(scope="module")
def backend():
    return m2ib.load(MODEL)


@pytest.fixture(scope="module")
def shapes_reference(backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_evaluation(
        backend, _shapes(backend), METHODS, METRICS, FAST, 0, out, progress=False, report=False, batch_size=2
    )
    return _pairs(out)


@pytest.fixture()
def no_ray_left():
    yield
    if ray.is_initialized():  # a failing test must not leave Ray running for the next one
        ray.shutdown()


def _shapes(backend):
    return load_table(SHAPES, size=backend.geometry.image_size[0])


def _pairs(out: Path) -> dict:
    _, records = read_results(Path(out) / "results.jsonl")
    keys = [(r["row"], r["method"]) for r in records if r["kind"] == "pair"]
    assert len(keys) == len(set(keys)), "a pair was written twice"
    return {(r["row"], r["method"]): r["metrics"] for r in records if r["kind"] == "pair"}


def _assert_same(found: dict, expected: dict) -> None:
    """Equal up to float rounding (actors run with another thread count than this process)."""
    assert found.keys() == expected.keys()
    for key, metrics in expected.items():
        assert found[key].keys() == metrics.keys(), key
        for name, value in metrics.items():
            assert found[key][name] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), (key, name)


def test_local_ray_run_equals_local_run(backend, tmp_path, no_ray_left):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40 + 8 * i, 48), (60 * i, 90, 200 - 50 * i)).save(tmp_path / f"{i}.png")
    table_path = tmp_path / "pairs.tsv"
    table_path.write_text("a red circle\t0.png\na blue square\tmissing.png\na green star\t1.png\na cat\t2.png\n")
    local, remote = tmp_path / "local", tmp_path / "ray"
    expected = run_evaluation(
        backend, load_table(str(table_path)), METHODS, METRICS, FAST, 0, local, progress=False, batch_size=2
    )
    result = run_evaluation_ray(
        backend,
        MODEL,
        load_table(str(table_path)),
        METHODS,
        METRICS,
        FAST,
        0,
        remote,
        RayConfig(actors=2, batch_size=2, object_store_memory=STORE),
        progress=False,
    )
    assert not ray.is_initialized()  # it shut down the instance it started
    _assert_same(_pairs(remote), _pairs(local))
    assert len(_pairs(remote)) == 6 and result.evaluated == 6 and result.finished
    assert [b["row"] for b in result.bad] == [b["row"] for b in expected.bad] == ["2"]
    assert "not found" in result.bad[0]["reason"]
    assert not list((remote / "parts").glob("*")), "part files are merged into results.jsonl at the end"
    with (remote / "summary.csv").open() as a, (local / "summary.csv").open() as b:
        ours, theirs = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [(r["method"], r["metric"], r["n"]) for r in ours] == [(r["method"], r["metric"], r["n"]) for r in theirs]
    for x, y in zip(ours, theirs):
        assert float(x["mean"]) == pytest.approx(float(y["mean"]), rel=1e-4, abs=1e-5, nan_ok=True)
    # the local scheduler resumes a finished Ray run: nothing left to do
    again = run_evaluation(
        backend, load_table(str(table_path)), METHODS, METRICS, FAST, 0, remote, progress=False, report=False
    )
    assert again.evaluated == 0 and again.skipped == 6 and len(again.bad) == 1  # bad rows are tried again


def test_two_node_cluster(backend, shapes_reference, tmp_path, no_ray_left):
    from ray.cluster_utils import Cluster

    # 3 logical CPUs per node and 2 per actor: one actor fits on each node, and a CPU is left
    # on each for Ray Data's own tasks.
    node = {"num_cpus": 3, "object_store_memory": STORE}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        result = run_evaluation_ray(
            backend,
            MODEL,
            _shapes(backend),
            METHODS,
            METRICS,
            FAST,
            0,
            tmp_path,
            RayConfig(actors=2, batch_size=2, cpus_per_actor=2),
            progress=False,
        )
        assert ray.is_initialized()  # the caller's connection is the caller's to close
        assert len(result.nodes) == 2, "the actors ran on both nodes"
    finally:
        ray.shutdown()
        cluster.shutdown()
    _assert_same(_pairs(tmp_path), shapes_reference)


def _cli(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "m2ib.cli",
        "evaluate",
        "--model",
        MODEL,
        "--data",
        SHAPES,
        "--methods",
        ",".join(METHODS),
        "--metrics",
        "confidence,deletion,localisation",
        "--deletion-steps",
        "2",
        "--steps",
        "2",
        "--method-samples",
        "2",
        "--out",
        str(out),
        "--ray",
        "--batch-size",
        "2",
        "--ray-object-store",
        str(STORE // 2**20),
    ]


def _wait_until(condition, limit: float, poll: float = 0.05) -> None:
    """Return as soon as ``condition()`` holds, or after ``limit`` seconds (the caller asserts)."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(poll)


def test_kill_and_resume(shapes_reference, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    # its own session, so that the kill takes the driver and the Ray processes it started
    proc = subprocess.Popen(
        _cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_until(lambda: proc.poll() is not None or glob.glob(str(out / "parts" / "part-*")), limit=900)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert glob.glob(str(out / "parts" / "part-*")), "no batch finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len([p for part in (out / "parts").glob("part-*") for p in part.read_text().splitlines()])
    assert 0 < before < 16
    (out / "parts" / ".part-0123.jsonl.abc.tmp").write_text('{"kind":"pair","row":"shapes:te')  # a torn write
    done = subprocess.run(_cli(out), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(_pairs(out), shapes_reference)
    assert not list((out / "parts").glob("*")) and (out / "summary.md").exists()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "provenance" and len(lines) == 17


def test_unreachable_cluster_fails_fast(tmp_path, capsys, no_ray_left):
    """Ray retries an address where nothing listens for minutes; m2ib says so at once."""
    import socket

    from m2ib.cli import main

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    code = main(
        [
            "evaluate",
            "--model",
            MODEL,
            "--data",
            "shapes:test:2",
            "--methods",
            "gradcam",
            "--metrics",
            "confidence",
            "--out",
            str(tmp_path),
            "--ray",
            f"127.0.0.1:{port}",
        ]
    )
    assert code == 2 and time.perf_counter() - start < 120  # Ray alone retries for minutes
    assert f"nothing answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_actor_failure_is_one_clear_error(backend, tmp_path, no_ray_left):
    """An actor that cannot start (here: another model than the driver's) ends the run with one
    line that names the cause, and Ray is shut down."""
    from m2ib.errors import RunError

    with pytest.raises(RunError, match="every node must load the same model") as info:
        run_evaluation_ray(
            backend,
            "shapes",
            _shapes(backend),
            ["gradcam"],
            METRICS,
            None,
            0,
            tmp_path,
            RayConfig(actors=1, batch_size=4, object_store_memory=STORE),
            progress=False,
        )
    assert "\n" not in str(info.value) and "re-run the same command" in str(info.value)
    assert not ray.is_initialized()
