"""m2ib audit: word merging and aggregation against hand-computed numbers, the run (resume after a
kill, bad rows counted), the command, and report.html in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2ib.auditing.aggregate import summarise
from m2ib.auditing.image import Region, box_cover, concentration, hot_regions, patch_mass
from m2ib.auditing.words import merge_words, word_shares, word_table
from m2ib.datasets.tables import load_table

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 2, "samples": 2}
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START, END = "<|startoftext|>", "<|endoftext|>"


def _record(row, text, tokens, scores, grid, similarity=0.5):
    return {
        "kind": "pair",
        "row": row,
        "method": "m2ib",
        "image": row,
        "text": text,
        "similarity": similarity,
        "tokens": [START, *tokens, END],
        "special": [0, len(tokens) + 1],
        "token_scores": [9.0, *scores, 9.0],
        "grid": grid,
    }


# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------
def test_sub_tokens_merge_into_lower_cased_words():
    tokens = [START, "a", "yel", "low", "-", "ish", "star", END]
    assert merge_words("A Yellow-ish star", tokens, [0, 7]) == [
        ("a", [1]),
        ("yellow", [2, 3]),
        ("-", [4]),
        ("ish", [5]),
        ("star", [6]),
    ]
    # a word cut off by the context length has no tokens and is left out
    assert merge_words("a red star", [START, "a", "red", END], [0, 3]) == [("a", [1]), ("red", [2])]
    # a tokenizer that rewrites the text: every token its own word, nothing lost
    assert merge_words("naïve", [START, "naive", END], [0, 2]) == [("naive", [1])]


def test_word_shares_average_sub_tokens_and_ignore_negative_scores():
    shares = word_shares(
        "a yellow star", [START, "a", "yel", "low", "star", END], [0, 5], [5.0, 1.0, 1.0, 2.0, -3.0, 5.0]
    )
    assert [w for w, _ in shares] == ["a", "yellow", "star"]
    assert [s for _, s in shares] == pytest.approx([0.4, 0.6, 0.0])  # yellow: (1 + 2) / 2, not 1 + 2
    assert [s for _, s in word_shares("a b", [START, "a", "b", END], [0, 3], [0, 0, 0, 0])] == [0.5, 0.5]


def test_word_table_hand_computed():
    pairs = [
        [("a", 0.5), ("red", 0.3), ("star", 0.2)],
        [("a", 0.6), ("blue", 0.4)],
        [("the", 0.1), ("red", 0.9)],
        [],
    ]  # a pair with no text map does not count
    rows = {r.word: r for r in word_table(pairs)}
    a, red = rows["a"], rows["red"]
    assert (a.count, a.top_count) == (2, 2)
    assert a.mean_share == pytest.approx(0.55)
    assert a.fair_share == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert a.top_share == 1.0 and a.in_pairs == pytest.approx(2 / 3)
    assert (red.count, red.top_count, red.top_share) == (2, 1, 0.5)
    assert red.mean_share == pytest.approx(0.6) and red.fair_share == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert rows["star"].top_count == 0 and rows["star"].in_pairs == pytest.approx(1 / 3)
    assert all(r.flag == "" for r in rows.values())  # fewer than MIN_COUNT pairs: never flagged


def test_a_constant_suffix_that_carries_the_match_is_flagged():
    """The planted text shortcut's shape: a token appended to every caption, holding most of it."""
    pairs = [[("a", 0.1), (colour, 0.2), ("star", 0.1), ("zq", 0.6)] for colour in ("red", "blue") * 5]
    pairs += [[("a", 0.2), ("green", 0.5), ("circle", 0.3)], [("a", 0.2), ("green", 0.3), ("circle", 0.5)]] * 6
    rows = {r.word: r for r in word_table(pairs)}
    assert rows["zq"].flag == "top too often"
    assert rows["a"].flag == "" and rows["green"].flag == ""
    assert word_table(pairs)[0].word == "zq"  # flagged words come first


# ----------------------------------------------------------------------------------------------
# Image
# ----------------------------------------------------------------------------------------------
def test_mass_concentration_and_box_cover():
    assert patch_mass(torch.tensor([[1.0, -1.0], [3.0, 0.0]])).tolist() == [[0.25, 0.0], [0.75, 0.0]]
    assert patch_mass(torch.zeros(2, 2)).tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert concentration(torch.full((4, 4), 1 / 16)) == pytest.approx(0.0)
    one = torch.zeros(4, 4, dtype=torch.float64)
    one[1, 2] = 1
    assert concentration(one) == pytest.approx(1.0)
    half = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    assert concentration(half) == pytest.approx(1 - np.log(2) / np.log(4))
    # 4x4 grid over a 40x40 image: patches of 10 px; a box (5, 0, 10, 10) covers half of two patches
    cover = box_cover((4, 4), (5.0, 0.0, 10.0, 10.0), (40, 40))
    assert cover[0, :2].tolist() == [0.5, 0.5] and float(cover.sum()) == pytest.approx(1.0)


def test_regions_are_connected_hot_patches_by_mass():
    prior = torch.full((4, 4), 0.02, dtype=torch.float64)
    prior[0, 0] = prior[0, 1] = 0.2  # a hot pair at the top-left (>= 2 x 1/16)
    prior[3, 3] = 0.16  # a hot patch alone at the bottom-right
    prior /= prior.sum()
    regions = hot_regions(prior)
    assert [r.name for r in regions] == ["R1", "R2"]
    assert regions[0].mask.nonzero().tolist() == [[0, 0], [0, 1]] and regions[0].box == (0, 0, 0, 1)
    assert regions[1].mask.nonzero().tolist() == [[3, 3]]
    assert regions[0].where((4, 4)) == "top-left corner" and regions[1].where((4, 4)) == "bottom-right corner"
    inner = Region("R", torch.zeros(9, 9, dtype=torch.bool), 0.1, (4, 1, 5, 2))  # left third, off the border
    assert inner.where((9, 9)) == "left" and Region("R", inner.mask, 0.1, (4, 0, 5, 1)).where((9, 9)) == "left edge"
    assert Region("R", inner.mask, 0.1, (4, 4, 4, 4)).where((9, 9)) == "centre"
    assert regions[0].mass == pytest.approx(float(prior[0, :2].sum()))


def test_summary_hand_computed():
    records = [
        _record("r1", "a red star", ["a", "red", "star"], [1, 3, 0], [[3, 1], [0, 0]]),
        _record("r2", "a blue star", ["a", "blue", "star"], [1, 1, 2], [[1, 1], [1, 1]]),
        _record("r3", "a red circle", ["a", "red", "circle"], [0, 0, 0], [[0, 0], [0, 4]]),
    ]
    s = summarise(records)
    # masses: r1 [[.75,.25],[0,0]], r2 all .25, r3 [[0,0],[0,1]]; prior = their mean
    assert s.prior.flatten().tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 12, 5 / 12])
    # 2 x even share = 0.5: no patch reaches it, so no region; pairs rank by concentration
    assert s.regions == [] and s.rank_by == "concentration"
    by_row = {p["row"]: p for p in s.pairs}
    assert all(p["region_mass"] is None for p in s.pairs)
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert by_row["r1"]["concentration"] == pytest.approx(1 - entropy / np.log(4))
    assert [p["row"] for p in s.typical()] == ["r3", "r1", "r2"]
    assert [by_row[r]["typical_rank"] for r in ("r3", "r1", "r2")] == [1, 2, 3]
    assert (by_row["r1"]["top_word"], by_row["r1"]["top_word_share"]) == ("red", 0.75)
    assert (by_row["r2"]["top_word"], by_row["r2"]["top_word_share"]) == ("star", 0.5)
    assert by_row["r3"]["top_word"] == "a"  # all scores 0: an even split, the first word on ties
    assert by_row["r2"]["concentration"] == pytest.approx(0.0, abs=1e-9)
    assert by_row["r3"]["concentration"] == pytest.approx(1.0)
    words = {w.word: w for w in s.words}
    assert words["a"].mean_share == pytest.approx((0.25 + 0.25 + 1 / 3) / 3)
    assert words["red"].mean_share == pytest.approx((0.75 + 1 / 3) / 2)


def test_pairs_rank_by_their_mass_in_the_regions():
    records = [
        _record("r1", "a red star", ["a", "red", "star"], [1, 3, 0], [[3, 1], [0, 0]]),
        _record("r2", "a blue star", ["a", "blue", "star"], [1, 1, 2], [[1, 1], [1, 1]]),
        _record("r3", "a red circle", ["a", "red", "circle"], [0, 0, 1], [[0, 0], [1, 3]]),
        _record("r4", "a red circle", ["a", "red", "circle"], [0, 0, 1], [[0, 0], [0, 4]]),
    ]
    s = summarise(records)
    # prior at the bottom-right: (0 + .25 + .75 + 1) / 4 = .5 = 2 x the even share: region R1
    assert s.prior[1, 1] == pytest.approx(0.5) and s.rank_by == "region_mass"
    assert [r.name for r in s.regions] == ["R1"] and s.regions[0].mask.nonzero().tolist() == [[1, 1]]
    assert s.regions[0].mass == pytest.approx(0.5)
    by_row = {p["row"]: p for p in s.pairs}
    assert [by_row[r]["region_mass"] for r in ("r1", "r2", "r3", "r4")] == [0.0, 0.25, 0.75, 1.0]
    assert by_row["r3"]["mass_R1"] == 0.75
    assert [p["row"] for p in s.typical()] == ["r4", "r3", "r2", "r1"]
    assert [by_row[r]["typical_rank"] for r in ("r4", "r3", "r2", "r1")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend():
    import m2ib

    return m2ib.load("shapes")


def _pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_audit_writes_its_files_and_resumes(backend, tmp_path):
    import m2ib

    out = tmp_path / "audit"
    result = m2ib.audit(backend, "shapes:test:4", out, batch_size=3, progress=False, report=False, **FAST)
    assert (result.explained, result.skipped, result.bad) == (4, 0, [])
    assert {p.name for p in out.iterdir()} >= {"results.jsonl", "words.csv", "pairs.csv", "image_prior.npz"}
    records = _pairs(out / "results.jsonl")
    assert [r["row"] for r in records] == [f"shapes:test:{i}" for i in range(4)]
    rows, cols = backend.geometry.patch_grid
    assert all(len(r["grid"]) == rows and len(r["grid"][0]) == cols for r in records)
    # the stored maps are the batched explain path's, rounded
    scene = load_table("shapes:test:2", size=backend.geometry.image_size[0]).rows[1]
    single = m2ib.explain(backend, scene.image, scene.text, seed=0, **FAST)
    assert np.allclose(records[1]["grid"], single.image_grid.numpy(), atol=1e-4)
    assert np.allclose(records[1]["token_scores"], single.text_map_raw.numpy(), atol=1e-4)
    prior = np.load(out / "image_prior.npz")
    assert prior["prior"].shape == (rows, cols) and prior["prior"].sum() == pytest.approx(1.0)
    again = m2ib.audit(backend, "shapes:test:4", out, batch_size=3, progress=False, report=False, **FAST)
    assert (again.explained, again.skipped) == (0, 4)
    assert len(_pairs(out / "results.jsonl")) == 4
    with pytest.raises(m2ib.InputError, match="other"):  # another setting is another run
        m2ib.audit(backend, "shapes:test:4", out, progress=False, report=False, steps=3, samples=2)


def test_bad_rows_are_counted_not_raised(backend, tmp_path):
    import m2ib

    table = tmp_path / "pairs.tsv"
    scene = ROOT / "examples" / "scene1.png"
    table.write_text(f"image\ttext\n{scene}\ta red circle\nmissing.png\ta blue star\n\tno image\n")
    result = m2ib.audit(backend, table, tmp_path / "out", progress=False, **FAST)
    assert result.explained == 1 and len(result.bad) == 2
    assert "2 bad row(s)" in (tmp_path / "out" / "report.html").read_text()


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "m2ib", "audit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


KILLED_ARGS = ("audit", "--data", "shapes:test:6", "--batch-size", "1", "--steps", "2", "--samples", "2")
KILL_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def uninterrupted_audit(tmp_path_factory):
    """The audit of ``KILLED_ARGS`` that nothing interrupted (shared by the kill tests)."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "whole"
    subprocess.run([sys.executable, "-m", "m2ib", *KILLED_ARGS, "--out", str(whole)], env=KILL_ENV, check=True)
    return whole


# Killed after the first pair, mid-way, and after the last pair (before words.csv, pairs.csv, the
# prior and the report): the re-run keeps what was written and its outputs are the uninterrupted
# run's, every file of them. Batch size 1 here, so the numbers are equal exactly (the maps do not
# depend on the batch size beyond float rounding; a record stores them rounded, see run.py).
@pytest.mark.slow
@pytest.mark.parametrize("pairs", [1, 3, 6])
def test_a_killed_run_resumes_losing_at_most_the_batch_in_flight(tmp_path, uninterrupted_audit, pairs):
    from killed_runs import assert_same_outputs, kill_after

    out = tmp_path / "run"
    args = [*KILLED_ARGS, "--out", str(out)]
    results = out / "results.jsonl"
    kill_after(args, pairs, KILL_ENV)
    before = _pairs(results)
    assert len(before) == pairs and not (out / "pairs.csv").exists()
    if pairs == 3:
        with results.open("a") as f:
            f.write('{"kind": "pair", "row": "shapes:test:')  # a torn last line, as a kill mid-write leaves
    proc = _cli(*args[1:])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    after = _pairs(results)
    assert [r["row"] for r in after] == [f"shapes:test:{i}" for i in range(6)]
    assert after[:pairs] == before  # kept, not redone
    assert_same_outputs(out, uninterrupted_audit)


def test_cli_refuses_bad_input_before_loading(tmp_path):
    proc = _cli("--data", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "o"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "no such file" in err
    proc = _cli("--data", "shapes:test:2", "--out", str(tmp_path / "o"), "--steps", "0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "steps" in err


# ----------------------------------------------------------------------------------------------
# The report in a real browser
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium); CI installs it")
def test_report_in_a_browser(backend, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    import m2ib

    out = tmp_path / "audit"
    result = m2ib.audit(backend, "shapes:test:8", out, batch_size=4, progress=False, **FAST)
    page_url = (out / "report.html").as_uri()
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("data:", page_url)) else None)
            page.goto(page_url)
            loaded = page.eval_on_selector_all("img", "es => es.map(e => e.complete && e.naturalWidth > 0)")
            assert loaded and all(loaded)
            assert page.locator("#most-typical figure").count() == 4  # 8 pairs: 4 and 4
            assert page.locator("#least-typical figure").count() == 4
            shown = page.eval_on_selector_all("table tr td:first-child", "es => es.map(e => e.textContent)")
            assert {w.word for w in result.summary.words[:5]} <= set(shown)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 900
    if os.environ.get("M2IB_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copyfile(shot, ROOT / "docs" / "audit_report.png")
    assert outside == []  # self-contained: the page asks nothing of anyone


def test_a_side_not_explained_is_left_out_not_a_crash():
    image_only = _record("r1", "a red star", ["a", "red", "star"], [1, 1, 1], [[1, 0], [0, 0]])
    image_only["token_scores"] = None
    text_only = _record("r2", "a blue star", ["a", "blue", "star"], [1, 3, 1], None)
    s = summarise([image_only, text_only])
    assert [w.word for w in s.words if w.count] == ["blue", "a", "star"] and s.imaged == ["r1"]
    by_row = {p["row"]: p for p in s.pairs}
    assert by_row["r1"]["top_word"] == "" and by_row["r2"]["concentration"] is None
    assert "typical_rank" not in by_row["r2"] and by_row["r1"]["typical_rank"] == 1


def test_notebook_display_is_the_reports_figures(backend, tmp_path):
    """An AuditResult shows in a notebook (``_repr_png_``) the report's mean map above its word chart:
    the PNG decodes, and its two parts are, pixel for pixel, the images report.html embeds."""
    import base64
    import io
    import re

    from PIL import Image

    import m2ib

    result = m2ib.audit(backend, "shapes:test:4", tmp_path / "audit", progress=False, **FAST)
    shown = Image.open(io.BytesIO(result._repr_png_())).convert("RGB")
    page = (tmp_path / "audit" / "report.html").read_text()
    embedded = [
        Image.open(
            io.BytesIO(base64.b64decode(re.search(f'id="{name}"[^>]*src="data:image/png;base64,([^"]+)"', page)[1]))
        )
        for name in ("prior", "word-chart")
    ]
    assert shown.height == sum(p.height for p in embedded)
    top = 0
    for part in embedded:
        crop = shown.crop((0, top, part.width, top + part.height))
        assert np.array_equal(np.asarray(crop), np.asarray(part.convert("RGB")))
        top += part.height
    assert "4 pairs" in repr(result)
