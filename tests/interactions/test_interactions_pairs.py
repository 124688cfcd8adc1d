"""``m2ib explain --pairs FILE --method INTERACTION``: every row's matrix and files, bad rows counted,
a re-run skips what is written, non-zero exit when a row failed (issue 20)."""

from __future__ import annotations

import torch
from PIL import Image

import m2ib
from m2ib.cli import main
from m2ib.interactions import interact, load_interaction


def _pairs_file(tmp_path):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (52, 40), (30, 60, 220)).save(tmp_path / "blue.png")
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "image\ttext\nred.png\ta red circle\nmissing.png\ta cat\nblue.png\ta blue square and a dot\nred.png\t   \n"
    )
    return path


def test_pairs_write_each_rows_matrix_and_count_bad_rows(tmp_path, capsys):
    pairs, out = _pairs_file(tmp_path), tmp_path / "out"
    argv = [
        "explain",
        "--pairs",
        str(pairs),
        "--model",
        "random-tiny",
        "--method",
        "exclip",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 2  # two rows failed
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("m2ib: skipped row")]
    assert [line.split(":")[1] for line in skipped] == [" skipped row 2", " skipped row 4"], err
    assert "missing.png" in skipped[0] and "empty" in skipped[1] and "2 of 4 pair(s) failed" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{stem}_exclip.{ext}" for stem in ("00001_red", "00003_blue") for ext in ("json", "npz", "png")]
    backend = m2ib.load("random-tiny")
    for stem, image, text in (
        ("00001_red", "red.png", "a red circle"),
        ("00003_blue", "blue.png", "a blue square and a dot"),
    ):
        back = load_interaction(out / f"{stem}_exclip")
        plain = interact(backend, tmp_path / image, text, method="exclip", steps=2)
        assert back.text == text and torch.allclose(back.matrix, plain.matrix, atol=1e-6)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 2  # the bad rows fail again; the written ones are skipped, not redone
    err = capsys.readouterr().err
    assert "2 pair(s) already in" in err and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_pairs_refusals_are_one_line(tmp_path, capsys):
    pairs = _pairs_file(tmp_path)
    for argv in (
        ["explain", str(tmp_path / "red.png"), "a red circle", "--pairs", str(pairs)],
        ["explain", "--pairs", str(tmp_path / "nope.tsv")],
        ["explain", "--pairs", str(pairs), "--steps", "0"],
    ):
        assert main([*argv, "--method", "exclip", "--model", "random-tiny", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("m2ib: error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
