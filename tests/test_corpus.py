"""Awkward inputs through the CLI, as a new user types them: each gives a clear one-line error and
exit code 2 (before the model loads where it can be checked cheaply), or a correct result with
finite maps and strict JSON. Never a traceback, a hang, a NaN or a silent degenerate map.

Each case runs ``m2ib.cli.main`` in-process (fast) with the tiny random model and the cheapest
settings that still exercise the path; the error cases pass ``--model`` a name that would take
seconds to load, so a case that fails only after loading is caught by the ``loaded`` check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2ib.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "examples" / "scene1.png")
FAST = ["--model", "random-tiny", "--steps", "2", "--samples", "2", "--no-figure"]
EVAL = ["evaluate", "--model", "random-tiny", "--data", "shapes:test:2", "--methods", "gradcam", "--metrics",
        "confidence"]


@pytest.fixture()
def files(tmp_path):
    """Awkward files: name -> path."""
    made = {}
    made["text_file"] = tmp_path / "notes.png"
    made["text_file"].write_text("not an image")
    made["empty"] = tmp_path / "empty.png"
    made["empty"].write_bytes(b"")
    good = tmp_path / "good.png"
    Image.open(SCENE).save(good)
    made["truncated"] = tmp_path / "truncated.png"
    made["truncated"].write_bytes(good.read_bytes()[:200])
    made["a_file"] = tmp_path / "occupied"
    made["a_file"].write_text("x")
    made["header_only"] = tmp_path / "pairs.tsv"
    made["header_only"].write_text("image\ttext\n")
    made["unicode"] = tmp_path / "scène ☃.png"
    Image.open(SCENE).save(made["unicode"])
    made["grey16"] = tmp_path / "grey16.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(made["grey16"])
    made["rgba"] = tmp_path / "rgba.png"
    Image.open(SCENE).convert("RGBA").save(made["rgba"])
    made["mixed_pairs"] = tmp_path / "mixed.tsv"
    made["mixed_pairs"].write_text(f"image\ttext\n{SCENE}\ta red circle\n{tmp_path / 'missing.png'}\ta cat\n"
                                   f"{made['text_file']}\ta dog\n{SCENE}\ta blue star\n")
    made["dir"] = tmp_path / "a_dir"
    made["dir"].mkdir()
    return made


# (id, argv with {placeholders}, expected exit code, text the one-line error must contain)
ERRORS = [
    ("device-cuda-missing", ["explain", SCENE, "a cat", "--device", "cuda"], "cuda"),
    ("device-mps", ["explain", SCENE, "a cat", "--device", "mps"], "mps"),
    ("device-unknown", ["explain", SCENE, "a cat", "--device", "foo"], "foo"),
    ("device-bad-index", ["explain", SCENE, "a cat", "--device", "cpu:x"], "cpu:x"),
    ("batch-size-zero", ["explain", SCENE, "a cat", "--batch-size", "0"], "batch"),
    ("batch-size-negative", ["explain", SCENE, "a cat", "--batch-size", "-3"], "batch"),
    ("samples-huge", ["explain", SCENE, "a cat", "--model", "random-tiny", "--samples", "100000000"], "samples"),
    ("samples-zero", ["explain", SCENE, "a cat", "--samples", "0"], "samples"),
    ("steps-zero", ["explain", SCENE, "a cat", "--steps", "0"], "steps"),
    ("out-is-a-file", ["explain", SCENE, "a cat", "--out", "{a_file}"], "occupied"),
    ("out-unwritable", ["explain", SCENE, "a cat", "--out", "/proc/m2ib-out"], "m2ib-out"),
    ("out-under-a-file", ["explain", SCENE, "a cat", "--out", "{a_file}/sub"], "occupied"),
    ("init-alpha-nan", ["explain", SCENE, "a cat", "--init-alpha", "nan"], "init_alpha"),
    ("lr-inf", ["explain", SCENE, "a cat", "--lr", "inf"], "lr"),
    ("var-zero", ["explain", SCENE, "a cat", "--var", "0"], "var"),
    ("beta-negative", ["explain", SCENE, "a cat", "--vision-beta", "-1"], "beta"),
    ("bool-banana", ["explain", SCENE, "a cat", "--cuda-graphs", "banana"], "banana"),
    ("precision-unknown", ["explain", SCENE, "a cat", "--precision", "fp8"], "fp8"),
    ("layer-outside", ["explain", SCENE, "a cat", "--model", "random-tiny", "--vision-layer", "99"], "99"),
    ("method-unknown", ["explain", SCENE, "a cat", "--method", "nosuch"], "nosuch"),
    ("modalities-unknown", ["explain", SCENE, "a cat", "--modalities", "audio"], "audio"),
    ("image-missing", ["explain", "{dir}/nothing.png", "a cat"], "nothing.png"),
    ("image-is-text", ["explain", "{text_file}", "a cat"], "notes.png"),
    ("image-empty", ["explain", "{empty}", "a cat"], "empty.png"),
    ("image-truncated", ["explain", "{truncated}", "a cat"], "truncated.png"),
    ("image-is-dir", ["explain", "{dir}", "a cat"], "a_dir"),
    ("text-empty", ["explain", SCENE, ""], "text"),
    ("text-blank", ["explain", SCENE, "   \t "], "text"),
    ("negative-empty", ["explain", SCENE, "a cat", "--negative", ""], "negative"),
    ("box-negative", ["explain", SCENE, "a cat", "--box", "-5,-5,10,10"], "box"),
    ("box-three-numbers", ["explain", SCENE, "a cat", "--box", "1,2,3"], "box"),
    ("model-is-an-image", ["explain", SCENE, "a cat", "--model", SCENE], "scene1.png"),
    ("model-missing-dir", ["explain", SCENE, "a cat", "--model", "./no/such/model"], "no/such/model"),
    ("model-unknown-hub-id", ["explain", SCENE, "a cat", "--model", "nobody/nothing"], "nobody/nothing"),
    ("pairs-header-only", ["explain", "--pairs", "{header_only}"], "no rows"),
    ("pairs-and-image", ["explain", SCENE, "a cat", "--pairs", "{header_only}"], "pairs"),
    ("nothing-to-explain", ["explain"], "image"),
    ("eval-device-cuda", [*EVAL, "--device", "cuda", "--out", "{dir}/e1"], "cuda"),
    ("eval-batch-size-zero", [*EVAL, "--batch-size", "0", "--out", "{dir}/e2"], "batch"),
    ("eval-rows-zero", [*EVAL, "--rows", "0", "--out", "{dir}/e3"], "rows"),
    ("eval-data-missing", ["evaluate", "--data", "{dir}/none.tsv", "--out", "{dir}/e4"], "none.tsv"),
    ("eval-metric-unknown", [*EVAL[:-1], "nosuch", "--out", "{dir}/e5"], "nosuch"),
    ("eval-out-is-a-file", [*EVAL, "--out", "{a_file}"], "occupied"),
    ("eval-old-samples-flag", [*EVAL, "--samples", "0", "--out", "{dir}/e6"], "samples"),
]


def _fill(argv, files):
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


@pytest.fixture()
def no_model_load(monkeypatch):
    """Records whether a model was loaded: cheap checks must come first."""
    import m2ib.api

    loaded = []
    real = m2ib.api.load

    def spy(*args, **kwargs):
        loaded.append(args[0] if args else kwargs.get("model"))
        return real(*args, **kwargs)

    monkeypatch.setattr(m2ib.api, "load", spy)
    return loaded


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("m2ib: error:") or lines[0].startswith("m2ib evaluate: error:") \
        or "error:" in lines[0], err
    return lines[0]


@pytest.mark.parametrize("case,argv,needle", ERRORS, ids=[c[0] for c in ERRORS])
def test_bad_input_is_one_line_and_exit_2(case, argv, needle, files, capsys, tmp_path, no_model_load):
    argv = _fill(argv, files)
    if argv[0] == "explain" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code = main(argv)
    line = _one_line_error(capsys)
    assert code == 2, line
    assert needle.lower() in line.lower(), line
    cheap = not case.startswith(("layer-", "samples-huge", "model-"))
    if cheap:
        assert no_model_load == [], f"{case}: the model was loaded before the error"


def _outputs(out: Path, stem: str | None = None) -> list[dict]:
    found = sorted(out.glob("*.json"))
    assert found, list(out.iterdir())
    records = []
    for path in found:
        text = path.read_text()
        record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{path.name} holds {c}"))
        records.append(record)
        npz = np.load(path.with_suffix(".npz"))
        for key in npz.files:
            if npz[key].dtype.kind == "f":
                assert np.isfinite(npz[key]).all(), (path.name, key)
    return records


GOOD_TEXTS = [
    ("chinese", "一只红色的圆形"),
    ("emoji", "a red circle 🔴 and a 🐱"),
    ("control-chars", "a red\x00 circle\x07 on\ttwo\nlines"),
    ("long", " ".join(["a red circle"] * 700)),
    ("special-token-typed", "a red <|endoftext|> circle <|startoftext|>"),
    ("accents", "un cercle rouge, très joli"),
]


@pytest.mark.parametrize("case,text", GOOD_TEXTS, ids=[c[0] for c in GOOD_TEXTS])
def test_awkward_texts_give_readable_tokens(case, text, tmp_path, capsys, recwarn):
    out = tmp_path / "out"
    assert main(["explain", SCENE, text, *FAST, "--out", str(out)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (record,) = _outputs(out)
    tokens = record["tokens"] if "tokens" in record else record["explanations"][0]["tokens"]
    inner = tokens[1:-1]
    assert all(t not in ("<|endoftext|>", "<|startoftext|>") for t in inner), tokens  # typed text is text
    mojibake = ("ä", "å", "ð", "Ã", "Ģ", "ł")
    if case in ("chinese", "emoji"):
        assert not any(any(m in t for m in mojibake) for t in tokens), tokens
    truncations = [w for w in recwarn.list if "token" in str(w.message) and "drop" in str(w.message)]
    truncations += [line for line in err.splitlines() if "dropped" in line]
    assert len(truncations) == (1 if case == "long" else 0), (truncations, err)


GOOD_FILES = ["unicode", "grey16", "rgba"]


@pytest.mark.parametrize("name", GOOD_FILES)
def test_awkward_images_explain(name, files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(files[name]), "a red circle", *FAST, "--out", str(out)]) == 0, capsys.readouterr()
    _outputs(out)
    if name == "unicode":
        assert any("scène" in p.name for p in out.iterdir()), list(out.iterdir())


def test_pairs_with_bad_rows_counts_them_apart(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", "--pairs", str(files["mixed_pairs"]), *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # exit 2: some rows failed (the others are written)
    assert len(_outputs(out)) == 2
    assert "2 of 4 pair(s) failed" in err, err
    assert "row 2" in err and "row 3" in err, err  # rows counted from 1, as in the file's data lines


def test_lr_that_diverges_is_loud(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", SCENE, "a red circle", *FAST, "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2 or "warning" in err.lower(), err
    assert "lr" in err, err


def test_strict_json_and_finite_maps_for_every_method(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", SCENE, "a red circle", "--model", "random-tiny", "--method", "all", "--steps", "2",
                 "--samples", "2", "--masks", "8", "--no-figure", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    _outputs(out)


@pytest.mark.slow
def test_help_and_list_load_no_model_library():
    """--help, list and argument errors answer in about a second: they import no model library
    (torch alone takes 1.5 s to import here; transformers' CLIP another 3-5 s)."""
    import subprocess
    import sys

    cases = {("--help",): ("torch", "transformers"), ("list",): ("transformers",),
             ("explain", "--help"): ("transformers",), ("explain", "x.png", "t", "--box", "1"): ("transformers",)}
    for argv, banned in cases.items():
        probe = ("import sys, runpy; sys.argv = ['m2ib', *%r]\n"
                 "try:\n    runpy.run_module('m2ib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                 "print([m for m in %r if m in sys.modules])") % (list(argv), banned)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout[-300:], done.stderr[-300:])


def test_several_methods_on_one_pair_show_progress_per_method(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", SCENE, "a red circle", "--model", "random-tiny", "--method", "gradcam,saliency,rollout",
                 "--no-figure", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "3/3" in err and "method·pair" in err, err
