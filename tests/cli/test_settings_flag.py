"""``--settings FILE`` on explain, evaluate and audit: the file's values replace the model's
recommended ones (flags still win), the results record the file, and a re-run with another file
is refused as another request, never answered with the first file's results."""

from __future__ import annotations

import json
from pathlib import Path

from m2ib.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCENE = str(ROOT / "examples" / "scene1.png")
FAST = ["--model", "random-tiny", "--steps", "2", "--samples", "2", "--no-figure"]


def _settings(tmp_path: Path, name: str, values: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"recommended": values}))
    return str(path)


def test_explain_uses_and_records_the_file_and_refuses_another(tmp_path, capsys):
    first = _settings(tmp_path, "first.json", {"m2ib": {"vision_beta": 3.0, "text_layer": 1}})
    out = tmp_path / "out"
    assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(out), "--settings", first]) == 0
    record = json.loads((out / "scene1.json").read_text())
    assert record["settings"]["vision_beta"] == 3.0 and record["settings"]["text_layer"] == 1
    assert record["settings_source"] == str(Path(first).resolve())
    assert record["request"]["settings_file"] == {"m2ib": {"vision_beta": 3.0, "text_layer": 1}}
    capsys.readouterr()
    # the same command: done, skipped
    assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(out), "--settings", first]) == 0
    assert "already in" in capsys.readouterr().err
    # another file, or none: another request, refused in one line
    second = _settings(tmp_path, "second.json", {"m2ib": {"vision_beta": 30.0}})
    for extra in (["--settings", second], []):
        assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "settings_file" in err and err.count("\n") == 1, err
    # a flag wins over the file
    flagged = tmp_path / "flagged"
    argv = ["explain", SCENE, "a red circle", *FAST, "--out", str(flagged), "--settings", first, "--vision-beta", "9"]
    assert main(argv) == 0
    settings = json.loads((flagged / "scene1.json").read_text())["settings"]
    assert settings["vision_beta"] == 9.0 and settings["text_layer"] == 1


def test_a_file_naming_other_methods_only_changes_nothing(tmp_path):
    other = _settings(tmp_path, "other.json", {"gradcam": {"vision_layer": 0}})
    out = tmp_path / "out"
    assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(out)]) == 0
    assert main(["explain", SCENE, "a red circle", *FAST, "--out", str(out), "--settings", other]) == 0


def test_evaluate_and_audit_record_the_file(tmp_path):
    from m2ib.evaluation.runner import read_results

    path = _settings(tmp_path, "s.json", {"gradcam": {"vision_layer": 0}, "m2ib": {"vision_beta": 3.0}})
    common = ["--model", "random-tiny", "--data", "shapes:test:2"]
    ev = tmp_path / "ev"
    argv = ["evaluate", *common, "--methods", "gradcam", "--metrics", "confidence", "--out", str(ev)]
    assert main([*argv, "--settings", path]) == 0
    header, _ = read_results(ev / "results.jsonl")
    assert header["settings"]["gradcam"]["vision_layer"] == 0
    assert header["settings_source"] == str(Path(path).resolve())
    assert main(argv) == 2  # without the file: other settings, refused
    au = tmp_path / "au"
    argv = ["audit", *common, "--steps", "2", "--samples", "2", "--no-report", "--out", str(au)]
    assert main([*argv, "--settings", path]) == 0
    header, _ = read_results(au / "results.jsonl")
    assert header["settings"]["m2ib"]["vision_beta"] == 3.0
    assert header["settings_source"] == str(Path(path).resolve())
    assert main(argv) == 2
