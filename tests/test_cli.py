"""The command line: files written, errors on one line with exit code 2, flags from settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from m2ib.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2ib.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from m2ib.datasets.shapes import make_caption, render_scene

    s = render_scene(11, size=64)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    s.to_pil().save(path)
    return path, make_caption(s, "single").text


def test_explain_writes_outputs(scene, tmp_path, capsys):
    image, text = scene
    code = main(["explain", str(image), text, "--model", "random-tiny", "--out", str(tmp_path),
                 "--steps", "2", "--samples", "2", "--vision-layer", "-1", "--box", "5,5,20,20"])
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {"scene.png", "scene.npz", "scene.json"}
    meta = json.loads((tmp_path / "scene.json").read_text())
    assert meta["settings"]["vision_layer"] == 3 and meta["settings"]["samples"] == 2
    assert str(tmp_path / "scene.png") in capsys.readouterr().out


def test_missing_image_exits_2_without_traceback(tmp_path):
    result = run_cli("explain", str(tmp_path / "nope.png"), "a cat", "--model", "random-tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == f"m2ib: error: {tmp_path / 'nope.png'}: image file not found"


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps=0 must be a positive integer"),
    (["--text-layer", "9"], "text_layer=9 is outside the text encoder's 4 blocks"),
    (["--model", "./no/such/dir"], "no such model directory"),
])
def test_bad_settings_exit_2(scene, args, message, capsys):
    image, text = scene
    assert main(["explain", str(image), text, "--model", "random-tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pairs_file_skips_bad_rows_and_resumes(scene, tmp_path, capsys):
    image, text = scene
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"{text}\t{image}\na cat\tmissing.png\na red circle\t{image}\n")
    out = tmp_path / "out"
    args = ["explain", "--pairs", str(pairs), "--model", "random-tiny", "--out", str(out), "--steps", "2",
            "--samples", "2", "--no-figure"]
    assert main(args) == 2  # one row failed: reported, the others written
    assert "skipped row 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.json")) == ["00000_scene.json", "00002_scene.json"]
    assert main(args) == 2
    assert "2 pair(s) already in" in capsys.readouterr().err


def test_help_lists_every_setting():
    result = run_cli("explain", "--help")
    assert result.returncode == 0
    for flag in ("--vision-layer", "--text-layer", "--vision-beta", "--text-beta", "--var", "--steps", "--lr",
                 "--samples", "--seed", "--precision", "--method", "--pairs", "--device"):
        assert flag in result.stdout
