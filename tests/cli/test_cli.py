"""The command line: files written, errors on one line with exit code 2, flags from settings."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

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
    code = main(
        [
            "explain",
            str(image),
            text,
            "--model",
            "random-tiny",
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--samples",
            "2",
            "--vision-layer",
            "-1",
            "--box",
            "5,5,20,20",
        ]
    )
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {"scene.png", "scene.npz", "scene.json"}
    meta = json.loads((tmp_path / "scene.json").read_text())
    assert meta["settings"]["vision_layer"] == 3 and meta["settings"]["samples"] == 2
    assert str(tmp_path / "scene.png") in capsys.readouterr().out


def test_missing_image_exits_2_without_traceback(tmp_path):
    result = run_cli("explain", str(tmp_path / "nope.png"), "a cat", "--model", "random-tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == f"m2ib: error: {tmp_path / 'nope.png'}: image file not found"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "steps=0 must be a positive integer"),
        (["--text-layer", "9"], "text_layer=9 is outside the text encoder's 4 blocks"),
        (["--model", "./no/such/dir"], "no such model directory"),
    ],
)
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
    args = [
        "explain",
        "--pairs",
        str(pairs),
        "--model",
        "random-tiny",
        "--out",
        str(out),
        "--steps",
        "2",
        "--samples",
        "2",
        "--no-figure",
    ]
    assert main(args) == 2  # one row failed: reported, the others written
    assert "skipped row 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.json")) == ["00001_scene.json", "00003_scene.json"]
    assert main(args) == 2
    assert "2 pair(s) already in" in capsys.readouterr().err


def test_help_lists_every_setting():
    result = run_cli("explain", "--help")
    assert result.returncode == 0
    for flag in (
        "--vision-layer",
        "--text-layer",
        "--vision-beta",
        "--text-beta",
        "--var",
        "--steps",
        "--lr",
        "--samples",
        "--seed",
        "--precision",
        "--method",
        "--pairs",
        "--device",
    ):
        assert flag in result.stdout


# ----------------------------------------------------------------------------------------------
# Settings become flags and come back unchanged; strict values; python -m m2ib; evaluate --rows.
# ----------------------------------------------------------------------------------------------
#: Settings read only together with others (refused alone, "honoured or refused, never ignored").
NEEDS = {
    "reference": {"bottleneck": "standardised"},
    **{
        f"adaib_{name}": {"objective": "adaib"}
        for name in ("relevance", "embeddings", "eps_f", "compression", "hidden", "eps_g", "clip")
    },
    "adaib_tau": {"objective": "adaib", "adaib_relevance": "cosine"},
    "adaib_constant": {"objective": "adaib", "adaib_relevance": "constant"},
}


def _other_value(settings_class, field):
    """A value of ``field`` that differs from its default and that the settings accept."""
    from m2ib.errors import InputError

    if field.choices:
        candidates = [c for c in field.choices if c != field.default]
    elif field.kind is bool:
        candidates = [not field.default]
    elif field.kind is int:
        candidates = [(field.default or 0) + 1, 3, 2, -1]
    elif field.kind is float:
        candidates = [(field.default or 0.0) * 2 + 0.25, 0.25, 0.75]
    else:
        candidates = [f"{field.default}x"]
    needs = NEEDS.get(field.name, {})  # read only with those settings
    for value in candidates:
        try:
            settings_class(**{field.name: value}, **needs)
        except InputError:
            continue
        return value
    pytest.fail(f"no accepted non-default value for {field.name}")


def _method_list():
    from m2ib.methods import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", _method_list())
def test_settings_round_trip_through_flags(method):
    from m2ib.cli import build_parser
    from m2ib.methods import REGISTRY
    from m2ib.settings import fields_of, given_settings, settings_per_method

    cls = REGISTRY[method].Settings
    fields = {f.name: f for f in fields_of(cls)}
    parser = build_parser()
    # one field at a time, with the settings it needs (some exclude each other: AdaIB's tau and constant)
    for field in fields.values():
        values = {**NEEDS.get(field.name, {}), field.name: _other_value(cls, field)}
        argv = ["explain", "scene.png", "a cat", "--method", method]
        for name, value in values.items():
            argv += [fields[name].flag, fields[name].format(value)]
        parsed = settings_per_method([method], given_settings(parser.parse_args(argv), REGISTRY), REGISTRY)[method]
        assert parsed == values and {k: type(v) for k, v in parsed.items()} == {k: type(v) for k, v in values.items()}
        assert cls(**parsed) == cls(**values) != cls()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--cuda-graphs", "banana", "cuda_graphs='banana' must be true or false"),
        ("--steps", "2.5", "steps='2.5' must be a whole number"),
        ("--lr", "nan", "lr=nan must be a finite number"),
        ("--precision", "int8", "precision='int8': use one of fp32, bf16, fp16"),
    ],
)
def test_bad_setting_values_are_one_line_errors(scene, tmp_path, flag, value, message):
    image, text = scene
    result = run_cli("explain", str(image), text, "--model", "random-tiny", "--out", str(tmp_path), flag, value)
    assert result.returncode == 2
    assert result.stderr == f"m2ib: error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_bool_setting_false_is_false(scene, tmp_path):
    image, text = scene
    assert (
        main(
            [
                "explain",
                str(image),
                text,
                "--model",
                "random-tiny",
                "--out",
                str(tmp_path),
                "--steps",
                "1",
                "--samples",
                "1",
                "--no-figure",
                "--cuda-graphs",
                "false",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "scene.json").read_text())["settings"]["cuda_graphs"] is False


def test_python_dash_m_m2ib():
    result = subprocess.run([sys.executable, "-m", "m2ib", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: m2ib ")
    assert "explain" in result.stdout and "evaluate" in result.stdout


def _evaluate(out, *extra):
    from m2ib.evaluation.runner import read_results

    code = main(
        [
            "evaluate",
            "--model",
            "random-tiny",
            "--data",
            "shapes:test:6",
            "--methods",
            "m2ib",
            "--metrics",
            "confidence",
            "--steps",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    header, records = read_results(out / "results.jsonl")
    return header, [r for r in records if r["kind"] == "pair"]


def test_evaluate_rows_and_samples(tmp_path, capsys):
    header, pairs = _evaluate(tmp_path / "a", "--rows", "2", "--samples", "3")
    assert len(pairs) == 2 and header["rows"] == 2
    assert header["settings"]["m2ib"]["samples"] == 3  # the methods' setting, as in m2ib explain
    assert "use --rows N" in capsys.readouterr().err  # the changed meaning is said, not silent
    header, pairs = _evaluate(tmp_path / "b", "--rows", "2", "--method-samples", "3")  # the old spelling
    assert len(pairs) == 2 and header["settings"]["m2ib"]["samples"] == 3
    assert "use --rows N" not in capsys.readouterr().err
    header, pairs = _evaluate(tmp_path / "c", "--rows", "3")
    assert len(pairs) == 3 and header["settings"]["m2ib"]["samples"] == 10


def test_explain_several_methods_equals_each_alone(scene, tmp_path):
    import numpy as np

    image, text = scene
    common = [str(image), text, "--model", "random-tiny", "--no-figure"]
    assert main(["explain", *common, "--method", "gradcam,saliency", "--out", str(tmp_path / "both")]) == 0
    both = np.load(tmp_path / "both" / "scene.npz")
    meta = json.loads((tmp_path / "both" / "scene.json").read_text())
    assert list(meta["methods"]) == ["gradcam", "saliency"]
    keys = set()
    for method in ("gradcam", "saliency"):
        assert main(["explain", *common, "--method", method, "--out", str(tmp_path / method)]) == 0
        alone = np.load(tmp_path / method / "scene.npz")
        np.testing.assert_array_equal(both["image"], alone["image"])
        for key in alone.files:
            if key != "image":
                np.testing.assert_array_equal(both[f"{method}/{key}"], alone[key])
                keys.add(f"{method}/{key}")
        assert (
            meta["methods"][method]["settings"]
            == json.loads((tmp_path / method / "scene.json").read_text())["settings"]
        )
    assert set(both.files) == keys | {"image"}


def test_a_new_setting_is_one_field(monkeypatch, registered):
    """A field added to a method's settings dataclass is a flag, read and checked, with nothing else."""
    import dataclasses

    from m2ib.cli import build_parser
    from m2ib.errors import InputError
    from m2ib.methods import REGISTRY, Saliency
    from m2ib.methods.base import setting
    from m2ib.settings import given_settings, settings_per_method

    @dataclasses.dataclass(frozen=True)
    class FlavouredSettings(Saliency.Settings):
        flavour: Literal["plain", "spiced"] = setting("plain", "how it tastes")
        pinch: float | None = setting(None, "how much; default: none")

    class Flavoured(Saliency):
        name, title, Settings = "flavoured-test", "Flavoured", FlavouredSettings

    registered(REGISTRY, Flavoured)
    parser = build_parser()
    assert "how it tastes" in parser._subparsers._group_actions[0].choices["explain"].format_help()

    def read(*flags):
        args = parser.parse_args(["explain", "x.png", "t", "--method", Flavoured.name, *flags])
        return settings_per_method([Flavoured.name], given_settings(args, REGISTRY), REGISTRY)[Flavoured.name]

    assert read("--flavour", "spiced", "--pinch", "0.5") == {"flavour": "spiced", "pinch": 0.5}
    with pytest.raises(InputError, match="flavour='salty': use one of plain, spiced"):
        read("--flavour", "salty")
    with pytest.raises(InputError, match="pinch='lots' must be a number"):
        read("--pinch", "lots")
    with pytest.raises(InputError, match="flavour=3 must be text"):
        FlavouredSettings(flavour=3)


def test_a_list_setting_is_a_comma_list():
    """tuple[kind, ...] fields (a metric's percentiles, its protocols; a method's too) read "10,20,30"
    strictly, item by item, and format back to the same text."""
    import dataclasses

    from m2ib.errors import InputError
    from m2ib.settings import SettingsBase, fields_of, setting

    @dataclasses.dataclass(frozen=True)
    class Lists(SettingsBase):
        steps: tuple[int, ...] = setting((10, 20), "whole numbers")
        modes: tuple[Literal["a", "b"], ...] = setting(("a",), "choices")
        shares: tuple[float, ...] | None = setting(None, "numbers, or none")

    steps, modes, shares = fields_of(Lists)
    assert (steps.many, steps.kind, modes.choices, shares.optional) == (True, int, ("a", "b"), True)
    assert steps.control == "list" and steps.metavar == "N[,...]" and modes.metavar == "{a,b}[,...]"
    assert steps.parse(" 10, 20 ,30") == (10, 20, 30) and steps.parse("") == () and steps.parse([1, 2.0]) == (1, 2)
    assert modes.parse("b,a") == ("b", "a") and shares.parse("0.5") == (0.5,) and shares.parse(None) is None
    for field, value in ((steps, (10, 20, 30)), (modes, ("b", "a")), (shares, (0.5, 0.25))):
        assert field.parse(field.format(value)) == value
    for field, text, message in (
        (steps, "10,,20", "steps='10,,20' has an empty item"),
        (steps, "10,", "has an empty item"),
        (steps, "10,2.5", "steps='2.5' must be a whole number"),
        (modes, "a,c", "modes='c': use one of a, b"),
        (shares, "0.5,nan", "shares=nan must be a finite number"),
    ):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            field.parse(text)
    with pytest.raises(InputError, match=r"steps=\[10\] must be a tuple"):
        Lists(steps=[10])
    with pytest.raises(InputError, match="steps='x' must be an integer"):
        Lists(steps=("x",))
    assert Lists(steps=(1,)).as_dict() == {"steps": (1,), "modes": ("a",), "shares": None}


def test_the_collector_is_paused_while_loading_and_left_as_found(tmp_path):
    """Startup (imports, the model's load) runs without cyclic garbage collections, which would walk
    every long-lived object for nothing; afterwards the collector is as the caller had it."""
    import gc
    from pathlib import Path

    import m2ib

    load = m2ib.load  # m2ib.api imported now, outside the count
    collections: list[int] = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        load("random-tiny")  # builds a model: thousands of allocations (6 young collections unpaused)
        assert collections in ([], [0])  # at most the one of the young objects when the collector resumes
        gc.disable()
        load("random-tiny")
        assert not gc.isenabled()  # a caller's choice is kept
        gc.enable()
        scene = str(Path(__file__).resolve().parents[2] / "examples" / "scene1.png")
        argv = ["explain", scene, "a red circle", "--model", "random-tiny", "--steps", "2", "--samples", "2"]
        assert main([*argv, "--no-figure", "--out", str(tmp_path / "out")]) == 0
        assert gc.isenabled() and gc.get_freeze_count() == 0  # what the command froze is collectable again
    finally:
        gc.callbacks.remove(count)
        gc.enable()
