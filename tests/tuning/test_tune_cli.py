"""Bad input to m2ib tune: one line naming the flag, exit 2, before the model loads where possible."""

from __future__ import annotations

import pytest

from m2ib.cli import main

# A model name that does not exist: an error about the flag, not the model, proves it came first.
NO_MODEL = ["--model", "/nonexistent/model"]


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--layers", "0,x"], "--layers"),
        (["--text-layers", "1.5"], "--text-layers"),
        (["--betas", "0.1,0"], "--betas"),
        (["--betas", "-1"], "--betas"),
        (["--betas", "nan"], "--betas"),
        (["--betas", ""], "--betas"),
        (["--layers", ","], "--layers"),
        (["--bottlenecks", "published,fancy"], "--bottlenecks"),
        (["--towers", "audio"], "--towers"),
        (["--rows", "1"], "--rows"),
        (["--seed", "-1"], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--data", "shapes:val:1"], "--data"),
        (["--ray", "--ray-actors", "0"], "--ray-actors"),
        (["--ray", "--ray-cpus-per-actor", "0"], "--ray-cpus-per-actor"),
    ],
)
def test_bad_flags_fail_before_the_model_loads(tmp_path, capsys, flags, flag):
    argv = ["tune", *NO_MODEL, "--data", "shapes:val:4", "--out", str(tmp_path / "o"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err


def test_data_file_with_one_pair(tmp_path, capsys):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    table = tmp_path / "pairs.tsv"
    table.write_text(f"a cat\t{image}\n")
    assert main(["tune", *NO_MODEL, "--data", str(table), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err and "2 or more" in err


def test_out_over_an_input(tmp_path, capsys):
    table = tmp_path / "m2ib.json"
    table.write_text("a cat\tx.png\nb dog\ty.png\n")
    assert main(["tune", *NO_MODEL, "--data", str(table), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "input" in err and len(err.splitlines()) == 1


def test_layer_out_of_range_once_the_depth_is_known(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["tune", "--model", "random-tiny", "--data", "shapes:val:2", "--out", str(out), "--layers", "0,4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--layers" in err and "4 blocks" in err and len(err.splitlines()) == 1
    assert not (out / "points.jsonl").exists()  # refused before any fit


def test_out_is_the_model_folder(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "m2ib.json").write_text("{}")
    assert main(["tune", "--model", str(model), "--data", "shapes:val:2", "--out", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "input" in err and len(err.splitlines()) == 1
