"""One explain pipeline for both kinds of method (issue 27) and outputs a user can rely on (issue 28):
one result protocol, one make_settings, figure code on arrays, every flag honoured or refused,
outputs never touch inputs, results keyed by what made them, a pair done only when all its files
are (a real kill -9 included), pairs files with a BOM, a header, bad rows, no empty --out left."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import m2ib
from m2ib.cli import main
from m2ib.comparison import Comparison
from m2ib.explanation import Explanation
from m2ib.interactions import Interaction, InteractionMethod, interact
from m2ib.methods.base import Configurable, Method
from m2ib.results import Result

SRC = Path(m2ib.__file__).resolve().parent
MODEL = ["--model", "random-tiny"]


@pytest.fixture(scope="module")
def tiny():
    return m2ib.load("random-tiny")


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (52, 40), (30, 60, 220)).save(tmp_path / "blue.png")
    return tmp_path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("m2ib: error:") and len(err.splitlines()) == 1, err
    return err


# --- 1. one result protocol --------------------------------------------------------------------
def test_every_result_kind_follows_the_protocol(tiny, folder, tmp_path):
    exp = m2ib.explain(tiny, folder / "red.png", "a red circle", method="gradcam")
    cmp = m2ib.compare(tiny, folder / "red.png", "a red circle", methods=["gradcam", "saliency"])
    inter = interact(tiny, folder / "red.png", "a red circle", method="exclip", steps=2)
    for result, kind in ((exp, Explanation), (cmp, Comparison), (inter, Interaction)):
        assert isinstance(result, kind) and isinstance(result, Result)
        text = repr(result)
        assert len(text) < 200 and "tensor(" not in text and "a red circle" in text, text
        assert all(isinstance(v, np.ndarray) for v in result.arrays().values())
        json.dumps(result.to_dict())
        paths = result.save(tmp_path / kind.__name__, "pair")
        assert sorted(paths) == ["json", "npz", "png"]
        saved = Image.open(paths["png"])
        shown = Image.open(__import__("io").BytesIO(result._repr_png_()))
        assert shown.size == saved.size and np.array_equal(np.asarray(shown), np.asarray(saved))


def test_the_json_is_written_last(tiny, folder, tmp_path, monkeypatch):
    """A save that dies while drawing leaves no JSON: the pair is not marked done."""
    exp = m2ib.explain(tiny, folder / "red.png", "a red circle", method="gradcam")

    def broken(*args, **kwargs):
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr(Explanation, "figure", broken)
    with pytest.raises(RuntimeError):
        exp.save(tmp_path, "pair")
    assert (tmp_path / "pair.npz").exists() and not (tmp_path / "pair.json").exists()


def test_a_big_figure_is_scaled_down_for_notebooks_only(tiny, folder, monkeypatch):
    from m2ib import results

    exp = m2ib.explain(tiny, folder / "red.png", "a red circle", method="gradcam")
    monkeypatch.setattr(results, "REPR_MAX_SIDE", 100)
    assert max(Image.open(__import__("io").BytesIO(exp._repr_png_())).size) <= 100


def test_one_make_settings_for_both_kinds_of_method():
    assert "make_settings" not in vars(InteractionMethod) and "make_settings" not in vars(Method)
    assert issubclass(InteractionMethod, Configurable) and issubclass(Method, Configurable)
    from m2ib.interactions import REGISTRY

    assert REGISTRY["exclip"]().make_settings(steps=3).steps == 3
    with pytest.raises(m2ib.InputError, match="unknown setting"):
        REGISTRY["exclip"]().make_settings(nope=1)


# --- 3. figure code takes arrays ---------------------------------------------------------------
def test_viz_imports_no_domain_class():
    """Every import in viz/, type-only ones included: nothing from explanation, interactions,
    comparison, methods or results (the figures draw tensors and strings)."""
    domain = {"explanation", "interactions", "comparison", "methods", "results", "pairs", "api"}
    found = []
    for path in (SRC / "viz").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                room = parts[0] if node.level == 2 else (parts[1] if parts[0] == "m2ib" and len(parts) > 1 else "")
                names = [room] + ([a.name for a in node.names] if node.level == 2 and not node.module else [])
                found += [f"{path.name}: {n}" for n in names if n in domain]
    assert not found, found


# --- 2. one pipeline; every flag honoured or refused -------------------------------------------
REFUSED = [
    (["--method", "exclip", "--negative", "a cat"], "--negative"),
    (["--method", "exclip", "--modalities", "image"], "--modalities"),
    (["--method", "exclip", "--batch-size", "4"], "--batch-size"),
    (["--method", "exclip,gradcam"], "runs alone"),
    (["--method", "rollout", "--negative", "a cat"], "--negative"),
    (["--method", "rise", "--modalities", "text"], "--modalities"),
    (["--method", "gradcam", "--steps", "3"], "steps"),
    (["--method", "gradcam", "--box", "1,1,5,5", "--no-figure"], "--box"),
]


@pytest.mark.parametrize("flags,named", REFUSED)
def test_a_flag_a_method_would_ignore_is_refused_before_the_model_loads(folder, capsys, monkeypatch, flags, named):
    monkeypatch.setattr("m2ib.api.load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["explain", str(folder / "red.png"), "a red circle", *MODEL, *flags, "--out", str(folder / "o")]) == 2
    assert named in _one_line_error(capsys)
    assert not (folder / "o").exists()


def test_an_interaction_method_runs_through_the_one_pipeline_with_boxes(folder, tiny):
    out = folder / "o"
    assert (
        main(
            [
                "explain",
                str(folder / "red.png"),
                "a red circle",
                *MODEL,
                "--method",
                "exclip",
                "--steps",
                "2",
                "--box",
                "0,0,20,20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "red_exclip.json").read_text())
    assert record["request"]["boxes"] == [[0, 0, 20, 20]] and record["files"] == ["red_exclip.npz", "red_exclip.png"]
    plain = interact(tiny, folder / "red.png", "a red circle", method="exclip", steps=2)
    with np.load(out / "red_exclip.npz") as saved:
        assert torch.allclose(torch.from_numpy(saved["matrix"]), plain.matrix, atol=1e-6)
    boxed = np.asarray(Image.open(out / "red_exclip.png"))
    assert not np.array_equal(boxed, np.asarray(plain.figure()))  # the box is drawn


# --- 4. outputs never touch inputs -------------------------------------------------------------
@pytest.mark.parametrize("out", [".", ""])
def test_an_output_over_an_input_is_refused(folder, capsys, monkeypatch, out):
    monkeypatch.chdir(folder)
    before = (folder / "red.png").read_bytes()
    assert main(["explain", "red.png", "a red circle", *MODEL, "--method", "gradcam", "--out", out]) == 2
    assert "over the input red.png" in _one_line_error(capsys)
    assert (folder / "red.png").read_bytes() == before and not (folder / "red.json").exists()


def test_an_output_over_the_pairs_file_is_refused(folder, capsys):
    out = folder / "o"
    out.mkdir()
    pairs = out / "00001_red.json"
    pairs.write_text("image,text\n../red.png,a red circle\n")
    pairs = pairs.rename(out / "00001_red.png")  # a pairs file named as an output would be
    assert main(["explain", "--pairs", str(pairs), *MODEL, "--method", "gradcam", "--out", str(out)]) == 2
    assert "over the input" in _one_line_error(capsys) and pairs.read_text().startswith("image,text")


# --- 4. results keyed by what made them --------------------------------------------------------
def test_a_rerun_with_other_inputs_is_refused_and_the_same_rerun_skips(folder, capsys):
    out = folder / "o"
    base = ["explain", str(folder / "red.png"), "a red circle", *MODEL, "--method", "gradcam", "--out", str(out)]
    assert main(base) == 0
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    changed = [
        (["explain", str(folder / "red.png"), "a yellow circle", *base[3:]], "text 'a red circle'"),
        ([*base, "--text-layer", "1"], "settings"),
        ([*base[:6], "saliency", *base[7:]], "methods"),
        ([*base, "--box", "1,1,5,5"], "boxes"),
    ]
    for argv, named in changed:
        assert main(argv) == 2
        err = _one_line_error(capsys)
        assert named in err and "--overwrite" in err and "another --out" in err, err
    Image.new("RGB", (40, 40), (0, 200, 0)).save(folder / "red.png")  # the same path, another picture
    assert main(base) == 2 and "picture" in _one_line_error(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing touched
    assert main(changed[0][0] + ["--overwrite"]) == 0
    assert json.loads((out / "red.json").read_text())["text"] == "a yellow circle"
    capsys.readouterr()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(changed[0][0]) == 0 and "already in" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


# --- 4. a pair is done only when all its files are ---------------------------------------------
@pytest.mark.parametrize("lost", ["png", "npz"])
def test_a_pair_missing_a_file_is_redone(folder, capsys, lost):
    pairs, out = folder / "pairs.csv", folder / "o"
    pairs.write_text("image,text\nred.png,a red circle\nblue.png,a blue square\n")
    argv = ["explain", "--pairs", str(pairs), *MODEL, "--method", "gradcam", "--batch-size", "1", "--out", str(out)]
    assert main(argv) == 0  # one pair a batch: the redone pair is fitted alone as before (no batch rounding)
    done = _outputs(out)
    kept = (out / "00002_blue.json").stat().st_mtime_ns
    (out / f"00001_red.{lost}").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 pair(s) already in" in capsys.readouterr().err
    assert (out / "00002_blue.json").stat().st_mtime_ns == kept and _same(_outputs(out), done)


def _outputs(out: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                found[path.name] = {k: arrays[k] for k in arrays.files}
        elif path.suffix == ".png":
            found[path.name] = np.asarray(Image.open(path))
        else:
            found[path.name] = path.read_bytes()
    return found


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if isinstance(x, dict):
            if x.keys() != y.keys() or not all(np.array_equal(x[k], y[k]) for k in x):
                return False
        elif isinstance(x, np.ndarray) and not np.array_equal(x, y) or not isinstance(x, np.ndarray) and x != y:
            return False
    return True


@pytest.mark.slow
def test_kill_9_during_pairs_then_rerun_equals_an_uninterrupted_run(folder):
    rows = "".join(
        f"{'red' if k % 2 else 'blue'}.png,a {'red' if k % 2 else 'blue'} shape number {k}\n" for k in range(6)
    )
    (folder / "pairs.csv").write_text("image,text\n" + rows)
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "m2ib",
            "explain",
            "--pairs",
            str(folder / "pairs.csv"),
            *MODEL,
            "--method",
            "m2ib",
            "--steps",
            "3",
            "--batch-size",
            "1",
            "--out",
            str(out),
        ]

    whole = folder / "whole"
    subprocess.run(command(whole), env=env, check=True, capture_output=True, timeout=300)
    expected = _outputs(whole)
    assert len(expected) == 18
    for attempt in range(6):  # until a kill lands after some pairs and before the last
        out = folder / f"killed{attempt}"
        proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("*.npz"))[attempt // 2 :]:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = len(list(out.glob("*.json"))) if out.exists() else 0
        if proc.returncode == -signal.SIGKILL and len(list(out.glob("*"))) > 0 and done < 6:
            break
    else:
        pytest.fail("no kill landed mid-run in 6 tries")
    subprocess.run(command(out), env=env, check=True, capture_output=True, timeout=300)
    got = _outputs(out)
    # the request records the run's folder-independent inputs only: the same arrays, figures and JSON
    assert _same(got, expected), sorted(set(got) ^ set(expected))


# --- 4. pairs files ----------------------------------------------------------------------------
def test_a_pairs_file_with_a_bom_header_runs(folder):
    (folder / "pairs.csv").write_bytes("\ufeffimage,text\nred.png,a red circle\n".encode("utf-8"))
    assert (
        main(
            [
                "explain",
                "--pairs",
                str(folder / "pairs.csv"),
                *MODEL,
                "--method",
                "gradcam",
                "--no-figure",
                "--out",
                str(folder / "o"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (folder / "o").iterdir()) == ["00001_red.json", "00001_red.npz"]


@pytest.mark.parametrize(
    "content,named",
    [
        ("photo,description\nred.png,a red circle\n", "'photo'"),
        ("image,text,label\nred.png,a red circle,1\n", "'label'"),
        ("image,image\nred.png,red.png\n", "repeated"),
    ],
)
def test_an_unknown_header_or_column_is_refused_naming_it(folder, capsys, monkeypatch, content, named):
    monkeypatch.setattr("m2ib.api.load", lambda *a, **k: pytest.fail("the model was loaded"))
    (folder / "pairs.csv").write_text(content)
    assert main(["explain", "--pairs", str(folder / "pairs.csv"), *MODEL, "--out", str(folder / "o")]) == 2
    assert named in _one_line_error(capsys) and not (folder / "o").exists()


def test_bad_rows_are_skipped_by_number_and_the_others_run(folder, capsys):
    (folder / "pairs.csv").write_text("image,text\nred.png,\nblue.png,a blue square\nred.png,a,b\n,a dot\n")
    assert (
        main(
            [
                "explain",
                "--pairs",
                str(folder / "pairs.csv"),
                *MODEL,
                "--method",
                "gradcam",
                "--no-figure",
                "--out",
                str(folder / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("m2ib: skipped row")]
    assert [line.split(":")[1].strip() for line in skipped] == ["skipped row 1", "skipped row 3", "skipped row 4"]
    assert "empty" in skipped[0] and "3 column(s)" in skipped[1] and "no image" in skipped[2]
    assert "3 of 4 pair(s) failed" in err
    assert sorted(p.name for p in (folder / "o").iterdir()) == ["00002_blue.json", "00002_blue.npz"]


def test_a_folder_as_pairs_file_is_one_line(folder, capsys):
    assert main(["explain", "--pairs", str(folder), *MODEL, "--out", str(folder / "o")]) == 2
    assert "is a folder" in _one_line_error(capsys)


# --- 4. a failed run leaves no empty --out -----------------------------------------------------
def test_a_failed_run_leaves_no_empty_out_folder(folder, capsys):
    (folder / "pairs.csv").write_text("image,text\nmissing.png,a cat\nred.png,   \n")
    out = folder / "new" / "o"
    assert (
        main(["explain", "--pairs", str(folder / "pairs.csv"), *MODEL, "--method", "gradcam", "--out", str(out)]) == 2
    )
    assert not (folder / "new").exists()
    assert (
        main(
            [
                "explain",
                str(folder / "red.png"),
                "a red circle",
                "--model",
                str(folder / "no-such-model"),
                "--method",
                "gradcam",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    capsys.readouterr()
    assert not (folder / "new").exists()
