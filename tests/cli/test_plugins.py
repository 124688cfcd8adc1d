"""Code outside the package extends m2ib through the entry-point group ``m2ib.plugins``.

The toy plugin (tests/plugin/m2ib_toy_plugin.py) is installed the way pip installs a package, as a
module plus a ``.dist-info`` folder with ``entry_points.txt``, in a folder of its own that is put on
the path of a fresh process: its method, interaction method, metric and model family then show in
``m2ib list``, run through ``explain`` and ``evaluate`` (the metric's option too: a settings field,
so a flag), and are offered by the viewer. A plugin that
fails to import fails loudly: one line naming it, a non-zero exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
SCENE = str(HERE.parent / "examples" / "scene3.png")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the installed toy plugin: its module and its dist-info with the entry point."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "plugin" / "m2ib_toy_plugin.py", site)
    info = site / "m2ib_toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: m2ib-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[m2ib.plugins]\ntoy = m2ib_toy_plugin\n")
    return site


def _run(site: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    paths = [str(site), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=environ)


def test_a_plugin_adds_a_method_an_interaction_a_metric_and_a_family(site, tmp_path):
    script = f"""
import json, sys
from m2ib.cli import main
from m2ib.serve.callbacks import registered_methods
from m2ib.serve.interplay import registered_interactions
out = {str(tmp_path)!r}
codes = {{
  "list": main(["list"]),
  "explain": main(["explain", {SCENE!r}, "a red circle", "--model", "toy:anything", "--method", "toy-centre",
                   "--width", "0.25", "--no-figure", "--out", out + "/explain"]),
  "interaction": main(["explain", {SCENE!r}, "a red circle", "--model", "toy:anything", "--method", "toy-outer",
                       "--no-figure", "--out", out + "/interaction"]),
  "evaluate": main(["evaluate", "--data", "shapes:test:2", "--model", "toy:anything", "--methods", "toy-centre",
                    "--width", "0.25", "--metrics", "toy-map-mean", "--toy-map-mean-scale", "2",
                    "--out", out + "/evaluate"]),
  "bad setting": main(["explain", {SCENE!r}, "a red circle", "--model", "toy:x", "--method", "toy-centre",
                       "--width", "2", "--out", out + "/bad"]),
}}
print(json.dumps({{"codes": codes, "viewer": list(registered_methods()),
                  "viewer_interactions": list(registered_interactions())}}))
"""
    done = _run(site, script)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == {"list": 0, "explain": 0, "interaction": 0, "evaluate": 0, "bad setting": 2}, done.stderr[
        -3000:
    ]
    listing = done.stdout
    for line in (
        "toy-centre",
        "Centre bias (toy plugin) (image, text) https://example.org/toy",
        "toy-outer",
        "toy-map-mean",
        "Toy ",
        "toy ToyModel (name prefix toy:)",
    ):
        assert line in listing, listing
    assert "toy-centre" in report["viewer"] and "toy-outer" in report["viewer_interactions"]
    assert "width=2" in done.stderr  # the plugin's own range check, as one line

    # explain ran the plugin's method on the plugin's family, with the setting given
    record = json.loads(next((tmp_path / "explain").glob("*.json")).read_text())
    assert record["method"] == "toy-centre" and record["settings"]["width"] == 0.25
    assert record["model"] == "toy:anything"
    maps = next((tmp_path / "explain").glob("*.npz"))
    import numpy as np

    image_map = np.load(maps)["image_map"]
    assert image_map.shape == (64, 64) and image_map.sum() == 16 * 16  # the centre box: 2 * int(64 * 0.25 / 2)
    assert list((tmp_path / "interaction").glob("*.json"))
    # evaluate measured the plugin's metric on the plugin's method: the box's share of the image, times the
    # metric's own option (its settings field became the flag --toy-map-mean-scale), which the run records
    records = [json.loads(line) for line in (tmp_path / "evaluate" / "results.jsonl").read_text().splitlines()]
    values = [r["metrics"]["toy_image_map_mean"] for r in records if r["kind"] == "pair"]
    assert values == [pytest.approx(2 * 256 / 4096)] * 2
    assert records[0]["metrics"] == {"names": ["toy-map-mean"], "toy_map_mean_scale": 2.0}


def test_a_broken_plugin_fails_loudly(site):
    done = _run(site, "import sys; from m2ib.cli import main; sys.exit(main(['list']))", M2IB_TOY_PLUGIN_BROKEN="1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "plugin 'toy'" in lines[0] and "broken on purpose" in lines[0], done.stderr
    done = _run(
        site,
        "import sys; from m2ib.cli import main; sys.exit(main(['explain', 'x.png', 't']))",
        M2IB_TOY_PLUGIN_BROKEN="1",
    )
    assert done.returncode == 2 and "plugin 'toy'" in done.stderr and "Traceback" not in done.stderr, done.stderr
