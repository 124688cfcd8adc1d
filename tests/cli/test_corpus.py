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
from m2ib.errors import InputError
from m2ib.settings import SEED_MAX, fields_of

ROOT = Path(__file__).resolve().parents[2]
SCENE = str(ROOT / "examples" / "scene1.png")
FAST = ["--model", "random-tiny", "--steps", "2", "--samples", "2", "--no-figure"]
EVAL = [
    "evaluate",
    "--model",
    "random-tiny",
    "--data",
    "shapes:test:2",
    "--methods",
    "gradcam",
    "--metrics",
    "confidence",
]


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
    made["mixed_pairs"].write_text(
        f"image\ttext\n{SCENE}\ta red circle\n{tmp_path / 'missing.png'}\ta cat\n"
        f"{made['text_file']}\ta dog\n{SCENE}\ta blue star\n"
    )
    made["dir"] = tmp_path / "a_dir"
    made["dir"].mkdir()
    for name, content in SETTINGS_FILES.items():
        made[name] = tmp_path / f"{name}.json"
        made[name].write_text(content)
    return made


#: Bad --settings files (name -> content): each is one line naming the file and the key.
SETTINGS_FILES = {
    "settings_bad_json": '{"m2ib": {"steps": 2',
    "settings_list": "[1, 2]",
    "settings_unknown_method": '{"nosuch": {"steps": 2}}',
    "settings_unknown_setting": '{"recommended": {"m2ib": {"vision_bet": 1}}}',
    "settings_bad_value": '{"m2ib": {"steps": 0}}',
}


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
    ("settings-missing", ["explain", SCENE, "a cat", "--settings", "{dir}/none.json"], "none.json: settings file not"),
    ("settings-bad-json", ["explain", SCENE, "a cat", "--settings", "{settings_bad_json}"], "bad_json.json: not valid"),
    ("settings-not-an-object", ["explain", SCENE, "a cat", "--settings", "{settings_list}"], "list.json: expected"),
    ("settings-is-a-dir", ["explain", SCENE, "a cat", "--settings", "{dir}"], "a_dir: is a folder"),
    (
        "settings-unknown-method",
        ["explain", SCENE, "a cat", "--settings", "{settings_unknown_method}"],
        "unknown_method.json: nosuch: unknown method",
    ),
    (
        "settings-unknown-setting",
        ["explain", SCENE, "a cat", "--settings", "{settings_unknown_setting}"],
        "unknown_setting.json: recommended.m2ib.vision_bet: unknown setting",
    ),
    (
        "settings-bad-value",
        ["explain", SCENE, "a cat", "--settings", "{settings_bad_value}"],
        "bad_value.json: m2ib: steps",
    ),
    (
        "eval-settings-unknown-method",
        [*EVAL, "--settings", "{settings_unknown_method}", "--out", "{dir}/e7"],
        "unknown_method.json: nosuch",
    ),
    (
        "audit-settings-unknown-setting",
        ["audit", "--data", "shapes:test:2", "--out", "{dir}/a1", "--settings", "{settings_unknown_setting}"],
        "unknown_setting.json: recommended.m2ib.vision_bet",
    ),
    (
        "audit-settings-missing",
        ["audit", "--data", "shapes:test:2", "--out", "{dir}/a2", "--settings", "x.json"],
        "x.json",
    ),
    ("serve-settings-bad-json", ["serve", "--settings", "{settings_bad_json}"], "bad_json.json: not valid"),
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
    # progress bars and status lines ("m2ib: loading model ... ...") are not errors
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and not line.endswith(" ...")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert (
        lines[0].startswith("m2ib: error:") or lines[0].startswith("m2ib evaluate: error:") or "error:" in lines[0]
    ), err
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
    code = main(
        [
            "explain",
            SCENE,
            "a red circle",
            "--model",
            "random-tiny",
            "--method",
            "all",
            "--steps",
            "2",
            "--samples",
            "2",
            "--masks",
            "8",
            "--no-figure",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    _outputs(out)


@pytest.mark.slow
def test_help_and_list_load_no_model_library():
    """--help, list and argument errors answer in about a second: they import no model library
    (torch alone takes 1.5 s to import here; transformers' CLIP another 3-5 s)."""
    import subprocess
    import sys

    cases = {
        ("--help",): ("torch", "transformers"),
        ("list",): ("transformers",),
        ("explain", "--help"): ("transformers",),
        ("explain", "x.png", "t", "--box", "1"): ("transformers",),
    }
    for argv, banned in cases.items():
        probe = (
            "import sys, runpy; sys.argv = ['m2ib', *%r]\n"
            "try:\n    runpy.run_module('m2ib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print([m for m in %r if m in sys.modules])"
        ) % (list(argv), banned)
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout[-300:], done.stderr[-300:])


def test_several_methods_on_one_pair_show_progress_per_method(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            SCENE,
            "a red circle",
            "--model",
            "random-tiny",
            "--method",
            "gradcam,saliency,rollout",
            "--no-figure",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "3/3" in err and "method·pair" in err, err


# ----------------------------------------------------------------------------------------------
# Every setting of every method and interaction method (walked from the registries): a bad value is
# one line and exit 2 before the model loads, on the command line and in the API; a value on the
# edge of the valid range is accepted. A new setting without a row here fails the coverage test.
# ----------------------------------------------------------------------------------------------
#: setting -> (bad value, valid value on the edge of the range), as typed on a command line
EDGES = {
    "seed": ("-1", str(SEED_MAX)),
    "vision_layer": ("1.5", "-1"),
    "text_layer": ("1.5", "-1"),
    "image_layer": ("1.5", "-1"),
    "start_layer": ("1.5", "0"),
    "vision_beta": ("-0.001", "0"),
    "text_beta": ("-0.001", "0"),
    "var": ("0", "1e-9"),
    "steps": ("0", "1"),
    "lr": ("0", "1e-9"),
    "samples": ("0", "1"),
    "init_alpha": ("inf", "-50"),
    "precision": ("fp8", "bf16"),
    "bottleneck": ("nosuch", "standardised"),
    "reference": ("shapes:val:4", None),  # refused without --bottleneck standardised (which it needs)
    "cuda_graphs": ("banana", "false"),
    "channels": ("nosuch", "sum"),
    "tokens": ("cls", "all"),
    "masks": ("0", "1"),
    "grid": ("0", "1"),
    "p_keep": ("0", "1"),
    "max_batch": ("0", "1"),
    "vision_blocks": ("0", "1"),
    "text_blocks": ("0", "1"),
    "pooling": ("nosuch", "model"),
    "chunk": ("0", "1"),
    "normalise": ("banana", "0"),
    "budget": ("3", "4"),
    "banzhaf_p": ("1", "1e-9"),
    "patch_group": ("0", "1"),
    "first_order": ("nosuch", "rise"),
    "objective": ("nosuch", "adaib"),
    "adaib_relevance": ("nosuch", "constant"),
    "adaib_embeddings": ("nosuch", "normalised"),
    "adaib_eps_f": ("0", "1e-9"),
    "adaib_tau": ("0", "1e-9"),
    "adaib_constant": ("0", "1e-9"),
    "adaib_compression": ("nosuch", "proportional"),
    "adaib_hidden": ("0", "1"),
    "adaib_eps_g": ("0", "1e-9"),
    "adaib_clip": ("-0.001", "0"),
}
#: Settings read only together with others (refused alone): what the edge value is given with.
NEEDS = {
    "reference": {"bottleneck": "standardised"},
    **{name: {"objective": "adaib"} for name in EDGES if name.startswith("adaib_")},
    "adaib_tau": {"objective": "adaib", "adaib_relevance": "cosine"},
    "adaib_constant": {"objective": "adaib", "adaib_relevance": "constant"},
}
OVERRIDES = {("kernelshap", "samples"): ("1", "2")}  # Kernel SHAP needs two coalitions at least


def _registered_settings() -> list[tuple[str, str]]:
    from m2ib.interactions import REGISTRY as INTERACTIONS
    from m2ib.methods import REGISTRY as METHODS

    found = []
    for registry in (METHODS, INTERACTIONS):
        for method in registry.names():
            if registry[method].__module__.startswith("m2ib."):  # plugins bring their own tests
                found += [(method, f.name) for f in fields_of(registry[method].Settings)]
    return found


SETTINGS = _registered_settings()


def _edges(method: str, name: str) -> tuple[str, str | None]:
    return OVERRIDES.get((method, name), EDGES[name])


def _method_class(method: str):
    from m2ib.interactions import REGISTRY as INTERACTIONS
    from m2ib.methods import REGISTRY as METHODS

    return METHODS[method] if method in METHODS else INTERACTIONS[method]


def test_every_registered_setting_has_a_row():
    missing = sorted({name for method, name in SETTINGS if (method, name) not in OVERRIDES and name not in EDGES})
    assert not missing, f"add a bad and an edge value for {missing} to EDGES"
    assert len(SETTINGS) >= 50


@pytest.mark.parametrize("method,name", SETTINGS, ids=[f"{m}.{n}" for m, n in SETTINGS])
def test_every_setting_refuses_a_bad_value_on_the_command_line(method, name, files, capsys, tmp_path, no_model_load):
    bad, _ = _edges(method, name)
    flag = "--" + name.replace("_", "-")
    out = tmp_path / "out"
    code = main(["explain", SCENE, "a red circle", "--method", method, flag, bad, "--out", str(out)])
    line = _one_line_error(capsys)
    assert code == 2 and name in line, line
    assert no_model_load == [], f"{method}.{name}={bad}: the model was loaded before the error"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))


@pytest.mark.parametrize("method,name", SETTINGS, ids=[f"{m}.{n}" for m, n in SETTINGS])
def test_every_setting_in_the_api_bad_refused_edge_accepted(method, name):
    field = next(f for f in fields_of(_method_class(method).Settings) if f.name == name)
    bad, edge = _edges(method, name)
    settings = _method_class(method).Settings
    with pytest.raises(InputError, match=name):
        settings(**{name: field.parse(bad)})
    extra = NEEDS.get(name, {})
    value = field.parse(edge if edge is not None else "shapes:val:4")
    assert getattr(settings(**{name: value}, **extra), name) == value


# ----------------------------------------------------------------------------------------------
# The rest of the corpus: one row per awkward input, through main() (argv) -> exit code and the
# one line's needle; every row fails before the model loads unless marked "loads".
# ----------------------------------------------------------------------------------------------
EV = ["evaluate", "--data", "shapes:test:2", "--methods", "gradcam", "--metrics", "confidence", "--out", "{dir}/ev"]
AU = ["audit", "--data", "shapes:test:2", "--out", "{dir}/au"]
EX = ["explain", SCENE, "a red circle", "--out", "{dir}/ex"]
HUGE = "99999999999999999999999"
CORPUS = [
    # numeric flags of every command, range-checked
    ("ev-time-limit-negative", [*EV, "--time-limit", "-5"], 2, "--time-limit -5"),
    ("ev-time-limit-nan", [*EV, "--time-limit", "nan"], 2, "--time-limit"),
    ("ev-time-limit-inf", [*EV, "--time-limit", "inf"], 2, "--time-limit"),
    ("ev-deletion-steps-zero", [*EV, "--deletion-steps", "0"], 2, "deletion"),
    ("ev-iou-k-zero", [*EV, "--iou-k", "0"], 2, "iou"),
    ("ev-iou-k-above-one", [*EV, "--iou-k", "1.5"], 2, "iou"),
    ("ev-sanity-steps-negative", [*EV, "--sanity-steps", "-1"], 2, "sanity"),
    ("ev-ray-actors-zero", [*EV, "--ray-actors", "0"], 2, "--ray-actors"),
    ("ev-ray-cpus-zero", [*EV, "--ray-cpus-per-actor", "0"], 2, "--ray-cpus-per-actor"),
    ("ev-ray-gpus-negative", [*EV, "--ray-gpus-per-actor", "-1"], 2, "--ray-gpus-per-actor"),
    ("ev-ray-object-store-zero", [*EV, "--ray-object-store", "0"], 2, "--ray-object-store"),
    ("ev-rows-negative", [*EV, "--rows", "-2"], 2, "--rows"),
    ("ev-batch-size-negative", [*EV, "--batch-size", "-1"], 2, "--batch-size"),
    ("ev-seed-huge", [*EV, "--seed", HUGE], 2, "generator"),
    ("ev-seed-negative", [*EV, "--seed", "-3"], 2, "generator"),
    ("ev-setting-bad", [*EV, "--setting", "gradcam.seed=-1"], 2, "seed"),
    ("ev-setting-unknown", [*EV, "--setting", "gradcam.nosuch=1"], 2, "nosuch"),
    ("ev-setting-no-dot", [*EV, "--setting", "gradcam=1"], 2, "--setting"),
    ("ev-methods-unknown", [*EV, "--methods", "nosuch"], 2, "nosuch"),
    ("ev-device-unknown", [*EV, "--device", "tpu"], 2, "tpu"),
    ("au-time-limit-negative", [*AU, "--time-limit", "-1"], 2, "--time-limit"),
    ("au-rows-zero", [*AU, "--rows", "0"], 2, "--rows"),
    ("au-batch-size-zero", [*AU, "--batch-size", "0"], 2, "--batch-size"),
    ("au-seed-huge", [*AU, "--seed", HUGE], 2, "generator"),
    ("au-data-missing", ["audit", "--data", "{dir}/none.tsv", "--out", "{dir}/au"], 2, "none.tsv"),
    ("au-method-unknown", [*AU, "--method", "nosuch"], 2, "nosuch"),
    ("au-steps-zero", [*AU, "--steps", "0"], 2, "steps"),
    ("au-control-unknown", [*AU, "--control", "nosuch"], 2, "--control nosuch"),
    ("ex-seed-huge", [*EX, "--seed", HUGE], 2, "generator"),
    ("ex-seed-negative", [*EX, "--seed", "-1"], 2, "generator"),
    ("ex-seed-float", [*EX, "--seed", "1.5"], 2, "seed"),
    ("ex-steps-huge", [*EX, "--steps", HUGE], 2, "steps"),
    ("ex-batch-size-nan", [*EX, "--batch-size", "nan"], 2, "batch-size"),
    ("ex-rollout-negative", [*EX, "--method", "rollout", "--negative", "a cat"], 2, "rollout"),
    ("ex-reference-without-standardised", [*EX, "--reference", "shapes:val:4"], 2, "standardised"),
    ("ex-setting-of-another-method", [*EX, "--method", "gradcam,saliency", "--masks", "5"], 2, "masks"),
    ("ex-method-empty", [*EX, "--method", ""], 2, "method"),
    ("ex-modalities-empty", [*EX, "--modalities", ","], 2, "modalities"),
    ("ex-box-outside", [*EX, "--box", "0,0,9999,10"], 2, "outside"),
    ("ex-box-far-away", [*EX, "--box", "5000,5000,1,1"], 2, "outside"),
    ("ex-box-zero-size", [*EX, "--box", "1,1,0,5"], 2, "box"),
    ("ex-box-nan", [*EX, "--box", "nan,1,2,3"], 2, "box"),
    ("ex-box-text", [*EX, "--box", "a,b,c,d"], 2, "box"),
    ("ex-unknown-flag", [*EX, "--nosuch"], 2, "nosuch"),
    ("ex-pairs-missing", ["explain", "--pairs", "{dir}/none.tsv", "--out", "{dir}/ex"], 2, "none.tsv"),
    ("ex-layer-outside-loads", [*EX, "--model", "random-tiny", "--text-layer", "-99"], 2, "-99"),
    (
        "ex-start-layer-outside-loads",
        [*EX, "--model", "random-tiny", "--method", "chefer", "--start-layer", "99"],
        2,
        "99",
    ),
    ("serve-port", ["serve", "--port", "70000"], 2, "--port"),
    ("serve-port-negative", ["serve", "--port", "-1"], 2, "--port"),
    ("serve-upload-nan", ["serve", "--max-upload-mb", "nan"], 2, "--max-upload-mb"),
    ("serve-megapixels-zero", ["serve", "--max-megapixels", "0"], 2, "--max-megapixels"),
    (
        "train-time-limit-negative",
        ["train-shapes", "--out", "{dir}/t", "--quick", "--time-limit", "-3"],
        2,
        "--time-limit",
    ),
    ("train-stop-after-zero", ["train-shapes", "--out", "{dir}/t", "--quick", "--stop-after", "0"], 2, "--stop-after"),
    ("train-steps-negative", ["train-shapes", "--out", "{dir}/t", "--quick", "--steps", "-5"], 2, "steps"),
    ("train-batch-size-zero", ["train-shapes", "--out", "{dir}/t", "--quick", "--batch-size", "0"], 2, "batch_size"),
    ("train-lr-nan", ["train-shapes", "--out", "{dir}/t", "--quick", "--lr", "nan"], 2, "lr"),
    ("top-unknown-command", ["nosuch"], 2, "nosuch"),
    ("top-no-command", [], 2, "command"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case,argv,code,needle", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(case, argv, code, needle, files, capsys, tmp_path, no_model_load, monkeypatch):
    import m2ib.cli.serve as serve_command

    monkeypatch.setattr(serve_command, "build_app", lambda *a, **k: pytest.fail("the viewer was built"))
    inputs = _snapshot(ROOT / "examples")
    assert main(_fill(argv, files)) == code
    line = _one_line_error(capsys)
    assert needle.lower() in line.lower(), line
    if not case.endswith("-loads"):
        assert no_model_load == [], f"{case}: the model was loaded before the error"
    assert _snapshot(ROOT / "examples") == inputs  # inputs untouched
    written = [p for p in files["dir"].rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert not written, written  # nothing half-written


# Missing optional packages: named with their pip line before the model loads (find_spec says "absent").
MISSING = [
    ("matplotlib", ["explain", SCENE, "a red circle", "--out", "{dir}/x"], "m2ib[figures]"),
    ("matplotlib", ["audit", "--data", "shapes:test:2", "--out", "{dir}/x"], "m2ib[figures]"),
    ("scipy", ["evaluate", "--data", "shapes:test:2", "--metrics", "road", "--out", "{dir}/x"], "m2ib[evaluate]"),
    ("scipy", ["evaluate", "--data", "shapes:test:2", "--out", "{dir}/x"], "m2ib[evaluate]"),  # road is a default
    (
        "ray",
        ["evaluate", "--data", "shapes:test:2", "--metrics", "confidence", "--ray", "--out", "{dir}/x"],
        "m2ib[ray]",
    ),
    (
        "shapiq",
        ["explain", SCENE, "a red circle", "--method", "fixlip", "--no-figure", "--out", "{dir}/x"],
        "m2ib[interactions]",
    ),
    ("gradio", ["serve"], "m2ib[viewer]"),
    ("matplotlib", ["tune", "--data", "shapes:val:2", "--out", "{dir}/x"], "m2ib[figures]"),
]


@pytest.mark.parametrize("module,argv,hint", MISSING, ids=[f"{m[0]}-{m[1][0]}" for m in MISSING])
def test_a_missing_extra_is_named_before_the_model_loads(module, argv, hint, files, capsys, no_model_load, monkeypatch):
    import importlib.util

    import m2ib.cli.serve as serve_command

    monkeypatch.setattr(serve_command, "build_app", lambda *a, **k: pytest.fail("the viewer was built"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert main(_fill(argv, files)) == 2
    line = _one_line_error(capsys)
    assert f"pip install '{hint}'" in line and module in line, line
    assert no_model_load == []


def test_no_extra_is_needed_where_the_flags_ask_for_nothing_optional(files):
    import argparse

    from m2ib.preflight import command_needs

    explain = argparse.Namespace(command="explain", method="m2ib", no_figure=True)
    evaluate = argparse.Namespace(command="evaluate", methods="m2ib", metrics="confidence,deletion", ray=None)
    audit = argparse.Namespace(command="audit", method="m2ib", no_report=True)
    assert command_needs(explain) == command_needs(evaluate) == command_needs(audit) == []


def test_pyproject_extras_hold_what_preflight_names():
    import tomllib

    from m2ib.preflight import EXTRAS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert any(req.replace("-", "_").startswith(module) for req in extras[extra]), (module, extra)


# ----------------------------------------------------------------------------------------------
# The API's edge: one InputError naming the argument.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    import m2ib

    return m2ib.load("random-tiny")


def _api_cases():
    import torch

    size = 64  # random-tiny's input size
    return [
        ("pixel-values-4-channels", {"pixel_values": torch.zeros(1, 4, size, size), "texts": "a cat"}, "pixel_values"),
        ("pixel-values-wrong-size", {"pixel_values": torch.zeros(1, 3, 7, 9), "texts": "a cat"}, "pixel_values"),
        ("pixel-values-3d", {"pixel_values": torch.zeros(3, size, size), "texts": "a cat"}, "pixel_values"),
        (
            "pixel-values-int",
            {"pixel_values": torch.zeros(1, 3, size, size, dtype=torch.long), "texts": "a cat"},
            "pixel_values",
        ),
        (
            "pixel-values-nan",
            {"pixel_values": torch.full((1, 3, size, size), float("nan")), "texts": "a cat"},
            "pixel_values",
        ),
        ("pixel-values-list", {"pixel_values": [[0.0]], "texts": "a cat"}, "pixel_values"),
        ("seed-huge", {"images": SCENE, "texts": "a cat", "seed": 10**23}, "seed"),
        ("seed-negative", {"images": SCENE, "texts": "a cat", "seed": -1}, "seed"),
        ("seed-bool", {"images": SCENE, "texts": "a cat", "seed": True}, "seed"),
        ("steps-huge", {"images": SCENE, "texts": "a cat", "steps": 2**70}, "steps"),
        ("batch-size-zero", {"images": SCENE, "texts": "a cat", "batch_size": 0}, "batch_size"),
        ("texts-number", {"images": SCENE, "texts": [3]}, "texts"),
        ("text-empty", {"images": SCENE, "texts": " "}, "text"),
        ("modalities-audio", {"images": SCENE, "texts": "a cat", "modalities": ("audio",)}, "modalities"),
        ("method-unknown", {"images": SCENE, "texts": "a cat", "method": "nosuch"}, "nosuch"),
        ("image-tensor-4-channels", {"images": torch.zeros(4, 8, 8), "texts": "a cat"}, "image"),
        ("image-missing", {"images": "/no/such.png", "texts": "a cat"}, "such.png"),
        (
            "images-and-pixels",
            {"images": SCENE, "pixel_values": torch.zeros(1, 3, size, size), "texts": "a cat"},
            "pixel_values",
        ),
        ("three-images-two-texts", {"images": [SCENE] * 3, "texts": ["a", "b"]}, "3 images"),
        (
            "negatives-for-rollout",
            {"images": SCENE, "texts": "a cat", "method": "rollout", "negatives": ["a dog"]},
            "rollout",
        ),
        ("unknown-setting", {"images": SCENE, "texts": "a cat", "nosuch": 1}, "nosuch"),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize("case,kwargs,needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_inputs_are_checked_at_the_edge(case, kwargs, needle, tiny):
    import m2ib

    with pytest.raises(InputError, match=None) as caught:
        m2ib.explain(tiny, steps=1, samples=1, **kwargs) if "steps" not in kwargs else m2ib.explain(tiny, **kwargs)
    assert needle.lower() in str(caught.value).lower() and "\n" not in str(caught.value), caught.value


@pytest.fixture(scope="module")
def one_explanation(tiny):
    import m2ib

    return m2ib.explain(tiny, SCENE, "a red circle", steps=1, samples=1)


SAVE_CASES = [
    ("into-a-file", lambda d: (d / "occupied").write_text("x") and d / "occupied", "x", "is a file"),
    ("under-a-file", lambda d: (d / "occupied").write_text("x") and d / "occupied" / "sub", "x", "is a file"),
    ("unwritable", lambda d: Path("/proc/m2ib-nowhere"), "x", "cannot write"),
    ("stem-is-a-folder", lambda d: (d / "x.json").mkdir() or d, "x", "is a folder"),
]


@pytest.mark.parametrize("case,where,stem,needle", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_save_into_a_bad_place_is_one_line_naming_it(case, where, stem, needle, one_explanation, tmp_path):
    target = where(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=needle):
        one_explanation.save(target, stem, figure=False)
    assert _snapshot(tmp_path) == before  # nothing written


def test_repr_is_one_short_line(one_explanation):
    text = repr(one_explanation)
    assert "\n" not in text and len(text) < 200 and "a red circle" in text and "image+text" in text, text


def test_save_writes_complete_files(one_explanation, tmp_path):
    paths = one_explanation.save(tmp_path / "new" / "deeper", "x", figure=False)
    record = json.loads(paths["json"].read_text())
    assert record["word_scores"] is not None and len(record["words"]) == len(record["word_scores"])
    assert set(np.load(paths["npz"]).files) >= {"image", "image_map", "text_map"}


# ----------------------------------------------------------------------------------------------
# Text maps a reader can trust; maps that rank nothing are said, for every method.
# ----------------------------------------------------------------------------------------------
def test_every_method_warns_when_its_words_rank_nothing():
    import torch

    from m2ib.explanation import Explanation

    flat = Explanation(
        text="a b c",
        tokens=["<s>", "a", "b", "c", "</s>"],
        image=torch.zeros(3, 8, 8),
        image_map=torch.zeros(8, 8),
        text_map=torch.zeros(5),
        text_map_raw=torch.zeros(5),
        image_map_raw=torch.full((8, 8), 2.0),
        special_tokens=(0, 4),
        method="gradcam",
    )
    assert set(flat.problems()) == {"constant image", "flat words"}, flat.problems()
    broad = torch.ones(8, 8)
    broad[0, 0] = 0.0
    flat.image_map = flat.image_map_raw = broad
    flat.text_map_raw = torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0])
    assert list(flat.problems()) == ["broad image"] and "98.4%" in flat.problems()["broad image"]
    broad[:4] = 0.0  # half the pixels: a map that localises
    assert flat.problems() == {}


def test_the_warning_comes_from_the_api_for_any_method(tiny, monkeypatch):
    import warnings

    import torch

    import m2ib
    from m2ib.methods import REGISTRY

    def constant(self, backend, modality, images, texts, target, settings):
        from m2ib.methods.base import RawScores

        n = len(images)
        return RawScores(torch.ones(n, 8, 8) if modality == "image" else torch.ones(n, texts.input_ids.shape[1]))

    monkeypatch.setattr(REGISTRY["saliency"], "attribute", constant)
    with pytest.warns(UserWarning, match="saliency: the image map is constant"):
        m2ib.explain(tiny, SCENE, "a red circle", method="saliency")
    with warnings.catch_warnings(record=True) as caught:  # many pairs: one line per kind, counted
        warnings.simplefilter("always")
        m2ib.explain(tiny, [SCENE] * 3, "a red circle", method="saliency")
    lines = [str(w.message) for w in caught]
    assert len(lines) == 2 and all("(3 of 3 pairs; pair 1)" in line for line in lines), lines


# ----------------------------------------------------------------------------------------------
# Feedback.
# ----------------------------------------------------------------------------------------------
def test_the_main_job_says_what_it_is_doing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: status lines
    assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "m2ib: loading model random-tiny ..." in err and "m2ib: explaining 1 pair(s) with m2ib ..." in err, err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file: the error alone
    assert main(["explain", SCENE, "a red circle", *FAST, "--text-layer", "99", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_audit_prints_no_evaluate_note(capsys, tmp_path, no_model_load):
    # --samples is valid here; --rows 0 stops the run after the settings are read (where the note was printed)
    assert (
        main(["audit", "--data", "shapes:test:2", "--samples", "2", "--rows", "0", "--out", str(tmp_path / "a")]) == 2
    )
    err = capsys.readouterr().err
    assert "note" not in err and "--rows" in err, err


def test_a_long_text_gives_a_bounded_figure():
    pytest.importorskip("matplotlib")
    import torch

    from m2ib.viz.figure import explanation_figure

    tokens = ["<s>", *[f"word{i}" for i in range(2000)], "</s>"]
    picture = explanation_figure(
        torch.rand(3, 32, 32),
        torch.rand(32, 32),
        tokens,
        torch.rand(len(tokens)),
        title=" ".join(tokens),
        subtitle="m2ib",
        special_tokens=(0, len(tokens) - 1),
    )
    assert picture.size[1] < 1300 and picture.size[0] < 2000, picture.size


@pytest.mark.slow
def test_list_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    done = subprocess.run(
        f"{sys.executable} -m m2ib list | (sleep 1; true)",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
