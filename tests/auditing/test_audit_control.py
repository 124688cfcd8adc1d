"""The audit's control (m2ib.auditing.control): what the control flags as much is a method artefact,
not a model finding (hand-made records where the answer is known), the default control (the model
randomised above the method's layers), the control in the stored records (a resumed run equals an
uninterrupted one), another control refused on the same folder, the files and the report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2ib.auditing.aggregate import summarise
from m2ib.auditing.outputs import REGION_COLUMNS, WORD_COLUMNS

FAST = {"steps": 2, "samples": 2}
START, END = "<|startoftext|>", "<|endoftext|>"


def _maps(tokens, scores, grid):
    return {
        "similarity": 0.5,
        "tokens": [START, *tokens, END],
        "special": [0, len(tokens) + 1],
        "token_scores": [9.0, *scores, 9.0],
        "grid": grid,
    }


def _record(row, text, model, control):
    """A stored pair: its text, the model's maps and the control's (each ``(scores, grid)``)."""
    tokens = text.split()
    return {
        "kind": "pair",
        "row": row,
        "method": "m2ib",
        "image": row,
        "text": text,
        **_maps(tokens, *model),
        "control": None if control is None else _maps(tokens, *control),
    }


CORNER = [[0.0, 0.0], [0.0, 1.0]]  # all the mass on the bottom-right patch
EVEN = [[1.0, 1.0], [1.0, 1.0]]


def _records(control_tops_article: bool, control_corner: bool) -> list[dict]:
    """10 captions 'a COLOUR star zq': the model puts 'a' on top in 6 of them and 'zq' in the other 4,
    and its maps on the bottom-right patch; the control puts 'a' on top everywhere or nowhere (then
    'star'), never 'zq', and its maps on the corner or evenly."""
    records = []
    for k in range(10):
        text = f"a {('red', 'blue')[k % 2]} star zq"
        model = [3.0, 1.0, 1.0, 1.0] if k < 6 else [1.0, 1.0, 1.0, 3.0]
        control = [6.0, 1.0, 1.0, 1.0] if control_tops_article else [1.0, 1.0, 6.0, 1.0]
        records.append(_record(f"r{k}", text, (model, CORNER), (control, CORNER if control_corner else EVEN)))
    return records


def test_a_flag_the_control_shares_is_a_method_artefact_and_one_it_does_not_is_a_finding():
    s = summarise(_records(control_tops_article=True, control_corner=True))
    words = {w.word: w for w in s.words}
    # 'a': top in 6 / 10 pairs (>= 0.5 and >= 2 x its fair share 0.25), mean share 0.367 (under 1.5 x 0.25):
    # 'top too often' under the model; 'everywhere; top too often' under the control -> an artefact
    assert (words["a"].top_share, words["a"].control_top_share) == (0.6, 1.0)
    assert words["a"].flag == "" and words["a"].artefact == "top too often"
    assert words["a"].control_flag == "everywhere; top too often"
    # 'zq': top in 4 / 10 under the model, never under the control: not flagged, not an artefact
    assert words["zq"].flag == words["zq"].artefact == "" and words["zq"].control_top_share == 0.0
    # the region on the bottom-right patch: the control's mean map holds all its mass there too
    (region,) = s.regions
    assert region.mask.nonzero().tolist() == [[1, 1]] and region.control_mass == pytest.approx(1.0)
    assert region.artefact
    assert s.control is not None and s.control.words[0].word == "a"


def test_the_same_model_flags_without_the_control_sharing_them_stay_model_findings():
    s = summarise(_records(control_tops_article=False, control_corner=False))
    words = {w.word: w for w in s.words}
    assert words["a"].flag == "top too often" and words["a"].artefact == ""
    assert words["a"].control_top_share == 0.0 and words["star"].control_top_share == 1.0
    assert words["star"].flag == "" and words["star"].artefact == ""  # flagged by the control only: nothing
    (region,) = s.regions
    assert region.control_mass == pytest.approx(0.25) and not region.artefact  # 0.25 < 2 x the even 0.25
    assert s.words[0].word == "a"  # model findings first


def test_each_reason_is_judged_on_its_own():
    # 'zq' is in every pair, holds 0.55 of each and tops all of them: 'everywhere; top too often';
    # the control gives it 0.4 (>= 1.5 x the fair 0.25: everywhere) but tops 'a' (not 'zq')
    records = [
        _record(f"r{k}", "a red star zq", ([1.0, 0.4, 0.4, 2.2], EVEN), ([2.0, 0.5, 0.5, 2.0], EVEN)) for k in range(6)
    ]
    words = {w.word: w for w in summarise(records).words}
    assert words["zq"].control_flag == "everywhere"
    assert words["zq"].flag == "top too often" and words["zq"].artefact == "everywhere"


def test_no_control_no_artefact():
    records = _records(control_tops_article=True, control_corner=True)
    for r in records:
        r["control"] = None
    s = summarise(records)
    words = {w.word: w for w in s.words}
    assert s.control is None and words["a"].flag == "top too often" and words["a"].artefact == ""
    assert words["a"].as_dict()["control_top_share"] is None and s.regions[0].control_mass is None


# ----------------------------------------------------------------------------------------------
# The default control
# ----------------------------------------------------------------------------------------------
def test_randomised_above_keeps_the_layer_and_below_and_redraws_the_rest():
    import m2ib
    from m2ib.metrics.sanity import randomised_above, randomised_cascade

    backend = m2ib.load("random-tiny")
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    layers = backend.num_layers("image"), backend.num_layers("text")
    copy = randomised_above(backend, {"image": 0, "text": layers[1] - 1})
    after = copy.model.state_dict()
    assert all(torch.equal(v, backend.model.state_dict()[k]) for k, v in before.items())  # the model untouched
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    vision = [f"vision_model.encoder.layers.{i}." for i in range(layers[0])]
    assert not any(k.startswith(vision[0]) for k in changed)  # the bottleneck's block is the model's
    assert all(any(k.startswith(p) for k in changed) for p in vision[1:])  # every block above is redrawn
    assert not any(k.startswith(("vision_model.embeddings", "text_model.embeddings")) for k in changed)
    assert not any(k.startswith("text_model.encoder.") for k in changed)  # text: the last block is the layer
    assert any(k.startswith("text_projection") for k in changed) and any(
        k.startswith("visual_projection") for k in changed
    )
    # one tower: the sanity check's cascade at the step that reaches the block above (same seeds)
    single = randomised_above(backend, {"image": 0})
    target = f"block {1}" if layers[0] > 1 else "head"
    cascade = next(b for label, b in randomised_cascade(backend, "image") if label == target)
    assert all(torch.equal(v, cascade.model.state_dict()[k]) for k, v in single.model.state_dict().items())
    with pytest.raises(m2ib.InputError, match="blocks 0"):
        randomised_above(backend, {"image": layers[0]})


@pytest.fixture(scope="module")
def backend():
    import m2ib

    return m2ib.load("shapes")


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_control_is_stored_resumed_as_the_uninterrupted_run_and_not_swapped(backend, tmp_path):
    import m2ib

    whole = m2ib.audit(backend, "shapes:test:4", tmp_path / "whole", batch_size=2, progress=False, report=False, **FAST)
    records = whole.records
    assert all(set(r["control"]) == {"similarity", "tokens", "special", "token_scores", "grid"} for r in records)
    assert any(r["control"]["token_scores"] != r["token_scores"] for r in records)  # the control's own maps
    header = json.loads((tmp_path / "whole" / "results.jsonl").read_text().splitlines()[0])
    assert header["metrics"]["control"] == "randomised"
    # killed after one batch (its results file cut there), then resumed: the same records and files
    part = tmp_path / "part"
    part.mkdir()
    lines = (tmp_path / "whole" / "results.jsonl").read_text().splitlines(keepends=True)
    (part / "results.jsonl").write_text("".join(lines[:3]))  # provenance + the first batch's 2 pairs
    rest = m2ib.audit(backend, "shapes:test:4", part, batch_size=2, progress=False, report=False, **FAST)
    assert rest.finished and (rest.explained, rest.skipped) == (2, 2)
    assert rest.records == records
    for name in ("words.csv", "regions.csv", "pairs.csv"):
        assert (part / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    with pytest.raises(m2ib.InputError, match="--control randomised, not none"):
        m2ib.audit(backend, "shapes:test:4", part, progress=False, report=False, control="none", **FAST)


def test_files_columns_and_the_model_as_its_own_control(backend, tmp_path):
    """The model as its own control flags exactly what it flags: every flag and region is an artefact."""
    import m2ib

    out = tmp_path / "self"
    # pinned text settings under which M2IB flags the article (block 0, beta 3: the shapes model's former
    # recommendation), so that there are flags to turn into artefacts whatever the model recommends now
    flagging = {**FAST, "text_layer": 0, "text_beta": 3.0}
    result = m2ib.audit(backend, "shapes:test:12", out, batch_size=6, progress=False, control=backend, **flagging)
    words, regions = _rows(out / "words.csv"), _rows(out / "regions.csv")
    assert list(words[0]) == list(WORD_COLUMNS) and (not regions or list(regions[0]) == list(REGION_COLUMNS))
    assert result.summary.control is not None
    assert all(w["flag"] == "" for w in words) and any(w["method_artefact"] for w in words)
    assert all(w["mean_share"] == w["control_mean_share"] for w in words)
    assert all(r["method_artefact"] == "spatial prior" and r["flag"] == "" for r in regions)
    page = (out / "report.html").read_text()
    assert "Method artefact" in page and "method_artefact" in page and "control_mass" in page
    artefacts = [w["word"] for w in words if w["method_artefact"]]
    assert f"'{artefacts[0]}'" in page.split("id='control'")[1].split("</p>")[0]


def test_no_control_writes_empty_control_columns(backend, tmp_path):
    import m2ib

    out = tmp_path / "none"
    result = m2ib.audit(backend, "shapes:test:6", out, progress=False, control="none", **FAST)
    assert all("control" not in r for r in result.records) and result.summary.control is None
    words = _rows(out / "words.csv")
    assert all(w["control_mean_share"] == "" and w["method_artefact"] == "" for w in words)
    assert "No control measured" in (out / "report.html").read_text()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "m2ib", "audit", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_bad_control_and_another_control_are_one_line_before_the_model_loads(tmp_path):
    bad = _cli("--data", "shapes:test:2", "--out", str(tmp_path / "o"), "--control", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--control nope" in bad.stderr
    file = tmp_path / "f.txt"
    file.write_text("x")
    bad = _cli("--data", "shapes:test:2", "--out", str(tmp_path / "o"), "--control", str(file))
    assert bad.returncode == 2 and "not a model directory" in bad.stderr
    out = tmp_path / "run"
    out.mkdir()
    header = {"kind": "provenance", "metrics": {"audit": 2, "names": [], "control": "randomised"}}
    (out / "results.jsonl").write_text(json.dumps(header) + "\n")
    swapped = _cli("--data", "shapes:test:2", "--out", str(out), "--control", "none", "--model", "no-such-model")
    # refused for the control, not for the model that would not load
    assert swapped.returncode == 2 and swapped.stderr.strip().count("\n") == 0
    assert "--control randomised, not none" in swapped.stderr
