"""m2ib evaluate: tables, bad rows, resumption after a kill, the summary against the rows."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from m2ib.datasets.tables import load_table
from m2ib.errors import InputError
from m2ib.evaluation.report import mean_ci, t975
from m2ib.evaluation.runner import evaluate_pair, read_results, run_evaluation
from m2ib.metrics import choose

FAST = {"m2ib": {"steps": 2, "samples": 2}}
METRICS = {"confidence": {}, "deletion": {"steps": 3}, "road": {"percentiles": (50,)}, "localisation": {}}


def _png(path: Path, seed: int, size=(40, 56)) -> Path:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def mscxr(tmp_path):
    """An MS-CXR-style CSV: 2 good pairs (one with 2 boxes), a missing image, a corrupt image, a bad box."""
    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 1)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        ["image", "phrase", "x", "y", "w", "h"],
        ["a.png", "a red circle", "2", "3", "10", "12"],
        ["a.png", "a red circle", "20", "30", "8", "8"],
        ["b.png", "a blue star", "5", "5", "20", "20"],
        ["missing.png", "a dog", "1", "1", "5", "5"],
        ["broken.png", "a cat", "1", "1", "5", "5"],
        ["b.png", "a green square", "1", "1", "-5", "5"],
    ]
    path = tmp_path / "ms_cxr.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_tables(tmp_path, mscxr):
    table = load_table(str(mscxr))
    assert table.kind == "mscxr" and [r.text for r in table.rows] == ["a red circle", "a blue star", "a dog", "a cat"]
    assert table.rows[0].boxes == ((2.0, 3.0, 10.0, 12.0), (20.0, 30.0, 8.0, 8.0))
    assert len(table.bad) == 1 and "positive" in table.bad[0]["reason"]
    # the reference's TSV: caption, then image, no header; the first line is data
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("a dog on grass\ta.png\nonly one column\nthe sea\t/abs/b.jpg\n")
    pairs = load_table(str(tsv))
    assert [(r.id, r.text, r.image) for r in pairs.rows] == [
        ("1", "a dog on grass", str(tmp_path / "a.png")),
        ("3", "the sea", "/abs/b.jpg"),
    ]
    assert [b["row"] for b in pairs.bad] == ["2"]
    shapes = load_table("shapes:test:5:mixed", size=64, samples=3, seed=1)
    again = load_table("shapes:test:5:mixed", size=64, samples=3, seed=1)
    assert [r.id for r in shapes.rows] == [r.id for r in again.rows] and len(shapes.rows) == 3
    assert shapes.rows[0].mask.shape == (64, 64) and shapes.rows[0].mask.any() and shapes.rows[0].relevant
    with pytest.raises(InputError):
        load_table("shapes:test")


def test_evaluate_pair_is_pure(backend, mscxr):
    row = load_table(str(mscxr)).rows[0]
    first = evaluate_pair(backend, row, ["gradcam", "m2ib"], METRICS, FAST, seed=3)
    second = evaluate_pair(backend, row, ["m2ib"], METRICS, FAST, seed=3)
    assert [r["method"] for r in first] == ["gradcam", "m2ib"]
    assert first[1]["metrics"] == second[0]["metrics"]
    keys = set(first[1]["metrics"])
    assert {"image_drop_m2ib", "text_increase_mask", "image_road_combined", "image_iou", "text_deletion_auc"} <= keys


@pytest.fixture()
def registry():
    """The metric registry, which this test may register into (what it adds is removed after)."""
    from m2ib.metrics import base

    before = set(base.REGISTRY.names())
    yield base
    for name in set(base.REGISTRY.names()) - before:
        base.REGISTRY.unregister(name)


def test_a_registered_metric_flows_through_the_run(backend, mscxr, tmp_path, registry):
    """A metric is one class with @register: evaluate_rows measures it, the records, summary
    tables, arrows, CSV and plots carry it, and METRIC_NAMES offers it; nothing else changes."""
    import m2ib.metrics
    from m2ib.metrics import Key, Measured, Metric, register

    @register
    class MapMass(Metric):
        name = "map_mass"
        title = "Map mass (a test metric)"
        keys = (Key("image_mass_inside", "higher"), Key("text_top_score", "lower"))
        needs = frozenset({"masks"})

        def measure(self, batch, run, side, maps):
            out = Measured.empty(len(batch))
            if side == "image":
                out.put("image_mass_inside", [(m * mask).sum() / m.sum() for m, mask in zip(maps, batch.masks)])
            else:
                out.put("text_top_score", [m.max() for m in maps])
            return out

    assert "map_mass" in m2ib.metrics.METRIC_NAMES and m2ib.metrics.direction("text_top_score") == "lower"
    config = {"map_mass": {}, "confidence": {"protocols": ("mask",)}}
    table = load_table(str(mscxr))
    records = evaluate_pair(backend, table.rows[0], ["gradcam"], config, FAST, seed=0)
    values = records[0]["metrics"]
    # the registry's order, whatever the order asked for: confidence first, then the new metric, per side
    assert list(values) == [
        "image_drop_mask",
        "image_increase_mask",
        "image_mass_inside",
        "text_drop_mask",
        "text_increase_mask",
        "text_top_score",
    ]
    exp = m2ib.explain(backend, table.rows[0].image, table.rows[0].text, method="gradcam", seed=0)
    from m2ib.metrics.localisation import ground_truth_mask

    mask = ground_truth_mask(backend, table.rows[0], (40, 56))  # a.png is 40 x 56: its boxes at the input size
    assert values["image_mass_inside"] == pytest.approx(
        float(exp.image_map[mask].sum() / exp.image_map.sum()), rel=1e-5
    )
    assert values["text_top_score"] == pytest.approx(float(exp.text_map.max()), rel=1e-6)

    out = tmp_path / "run"
    run_evaluation(backend, table, ["gradcam", "saliency"], config, FAST, 0, out, progress=False)
    summary = (out / "summary.md").read_text()
    assert "## Map mass (a test metric)" in summary and "image_mass_inside ↑" in summary
    assert "text_top_score ↓" in summary
    with (out / "summary.csv").open() as f:
        better = {r["metric"]: r["better"] for r in csv.DictReader(f)}
    assert better["image_mass_inside"] == "higher" and better["text_top_score"] == "lower"
    assert (out / "plots" / "bar_text_top_score.png").exists()


def test_a_whole_run_metric_runs_once_after_the_pairs_and_resumes(backend, mscxr, tmp_path, registry):
    """A whole-run metric (as ROAR+ is) has its place in the same registry: it runs after the
    pairs, its records go to results.jsonl with their own kind, a re-run skips what is done,
    and its summary section is written."""
    from m2ib.metrics import Metric, register

    calls = []

    @register
    class PairCount(Metric):
        name = "pair_count"
        title = "Pairs per method"
        per_pair = False

        def measure_run(self, context):
            done = {r["method"] for r in context.records if r.get("kind") == self.name}
            for method in context.methods:
                if method not in done:
                    calls.append(method)
                    pairs = sum(r.get("kind") == "pair" and r["method"] == method for r in context.records)
                    context.emit({"kind": self.name, "method": method, "pairs": pairs})

        def summary_section(self, records, methods):
            mine = [r for r in records if r.get("kind") == self.name]
            return ("Pairs per method", "\n".join(f"- {r['method']}: {r['pairs']}" for r in mine)) if mine else None

    config = {"confidence": {"protocols": ("mask",)}, "pair_count": {}}
    out = tmp_path / "run"
    run_evaluation(backend, load_table(str(mscxr)), ["gradcam", "saliency"], config, FAST, 0, out, progress=False)
    _, records = read_results(out / "results.jsonl")
    assert [r["kind"] for r in records] == ["pair"] * 4 + ["pair_count"] * 2
    assert [(r["method"], r["pairs"]) for r in records[4:]] == [("gradcam", 2), ("saliency", 2)]
    summary = (out / "summary.md").read_text()
    assert "## Pairs per method" in summary and "- saliency: 2" in summary
    run_evaluation(backend, load_table(str(mscxr)), ["gradcam", "saliency"], config, FAST, 0, out, progress=False)
    assert calls == ["gradcam", "saliency"] and len(read_results(out / "results.jsonl")[1]) == 6


def test_registry_refuses_a_key_twice(registry):
    from m2ib.metrics import Key, Metric, register

    class Copy(Metric):
        name = "copy"
        title = "Copy"
        keys = (Key("image_iou", "higher"),)

    with pytest.raises(ValueError, match="image_iou recorded by another metric"):
        register(Copy)
    with pytest.raises(InputError, match="unknown metric"):
        choose(["copy"])


def test_bad_rows_counted_and_summary_matches_rows(backend, mscxr, tmp_path):
    out = tmp_path / "run"
    result = run_evaluation(backend, load_table(str(mscxr)), ["gradcam", "m2ib"], METRICS, FAST, 0, out, progress=False)
    reasons = sorted(b["reason"] for b in result.bad)
    assert len(result.bad) == 3  # the bad box (read), the missing and the corrupt image (evaluated)
    assert any("not found" in r for r in reasons) and any("cannot read" in r for r in reasons)
    assert "Bad rows" in (out / "summary.md").read_text()
    assert len((out / "bad_rows.csv").read_text().splitlines()) == 4
    header, records = read_results(out / "results.jsonl")
    assert header["weights_sha256"] and header["versions"]["torch"] == torch.__version__
    assert header["settings"]["m2ib"]["steps"] == 2 and header["metrics"]["protocols"] == ["m2ib", "mask"]
    assert len(records) == 4  # 2 rows x 2 methods
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert summary
    for line in summary:
        values = [r["metrics"][line["metric"]] for r in records if r["method"] == line["method"]]
        xs = [v for v in values if v is not None]
        mean = sum(xs) / len(xs)
        assert int(line["n"]) == len(xs)
        assert float(line["mean"]) == pytest.approx(mean, abs=1e-12)
        if len(xs) > 1:
            sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
            assert float(line["ci95_high"]) == pytest.approx(mean + t975(len(xs) - 1) * sd / math.sqrt(len(xs)))
    assert (out / "plots" / "image_deletion_insertion.png").exists()
    assert (out / "plots" / "bar_image_drop_m2ib.png").exists()
    # the same command resumes (nothing left to do); other settings are refused
    again = run_evaluation(
        backend, load_table(str(mscxr)), ["gradcam", "m2ib"], METRICS, FAST, 0, out, progress=False, report=False
    )
    assert again.evaluated == 0 and again.skipped == 4 and len(again.bad) == 3
    with pytest.raises(InputError, match="other seed"):
        run_evaluation(backend, load_table(str(mscxr)), ["gradcam", "m2ib"], METRICS, FAST, 1, out, progress=False)


@pytest.mark.slow
def test_resuming_some_methods_first(backend, mscxr, tmp_path):
    """--methods may name some of a run's methods (cheap ones first); the full command then does
    only the rest, and the records equal a run of everything at once."""
    table, out, whole = load_table(str(mscxr)), tmp_path / "run", tmp_path / "whole"
    run_evaluation(
        backend, table, ["gradcam", "m2ib", "saliency"], METRICS, FAST, 0, out, progress=False, time_limit=0
    )  # starts the run (its provenance names all three) and stops at once
    part = run_evaluation(backend, table, ["saliency"], METRICS, FAST, 0, out, progress=False)
    assert part.evaluated == 2 and "saliency" in (out / "summary.md").read_text()
    assert "gradcam" not in (out / "summary.md").read_text()  # summarises this command's methods
    rest = run_evaluation(backend, table, ["gradcam", "m2ib", "saliency"], METRICS, FAST, 0, out, progress=False)
    assert rest.evaluated == 4 and rest.skipped == 2
    run_evaluation(backend, table, ["gradcam", "m2ib", "saliency"], METRICS, FAST, 0, whole, progress=False)
    key = lambda r: (r["row"], r["method"])  # noqa: E731
    got = sorted(read_results(out / "results.jsonl")[1], key=key)
    want = sorted(read_results(whole / "results.jsonl")[1], key=key)
    assert [(key(r), r["metrics"]) for r in got] == [(key(r), r["metrics"]) for r in want]
    with pytest.raises(InputError, match="methods \\(rise not in gradcam, m2ib, saliency\\)"):
        run_evaluation(backend, table, ["rise"], METRICS, {}, 0, out, progress=False)
    with pytest.raises(InputError, match="other settings"):
        run_evaluation(backend, table, ["m2ib"], METRICS, {"m2ib": {"steps": 3, "samples": 2}}, 0, out, progress=False)


def test_mean_ci():
    assert mean_ci([1.0, 2.0, 3.0]) == (3, 2.0, pytest.approx(4.303 * 1 / math.sqrt(3)))
    n, mean, half = mean_ci([None, 5.0])
    assert (n, mean) == (1, 5.0) and math.isnan(half)
    assert t975(1000) == pytest.approx(1.9623, abs=1e-3)


def test_torn_last_line_is_ignored_and_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"kind":"provenance","seed":0}\n{"kind":"pair","row":"1","method":"m"}\n{"kind":"pa')
    header, records = read_results(path, repair=True)
    assert header["seed"] == 0 and len(records) == 1
    assert path.read_bytes().endswith(b'"method":"m"}\n')


def _cli(out: Path, extra=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "m2ib.cli",
        "evaluate",
        "--model",
        "random-tiny",
        "--data",
        "shapes:test:10",
        "--methods",
        "gradcam,saliency",
        "--metrics",
        "confidence,deletion,localisation",
        "--deletion-steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def _pairs(out: Path) -> dict:
    _, records = read_results(out / "results.jsonl")
    return {(r["row"], r["method"]): r["metrics"] for r in records if r["kind"] == "pair"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run of ``_cli`` that nothing interrupted (shared by the kill tests)."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "whole"
    subprocess.run(_cli(whole), env=KILL_ENV, check=True, capture_output=True)
    return whole


KILL_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# Killed after the provenance record only, after the first pair, mid-way, and after the last pair
# (before the summary, the CSV and the plots): the re-run's outputs are the uninterrupted run's, every
# file of them (batch size 1: the same numbers exactly, timings aside).
@pytest.mark.slow
@pytest.mark.parametrize("pairs", [0, 1, 10, 20])
def test_resume_after_kill(tmp_path, uninterrupted, pairs):
    from killed_runs import assert_same_outputs, kill_after

    cut = tmp_path / "cut"
    results = cut / "results.jsonl"
    kill_after(_cli(cut)[3:], pairs, KILL_ENV)
    assert len(_pairs(cut)) == pairs and results.read_bytes().count(b"\n") == 1 + pairs
    assert not (cut / "summary.md").exists()
    if pairs == 10:
        with results.open("ab") as f:  # what a kill in the middle of a write leaves behind
            f.write(b'{"kind":"pair","row":"shapes:test:9","metr')
    subprocess.run(_cli(cut), env=KILL_ENV, check=True, capture_output=True)
    assert len(_pairs(cut)) == 20
    assert all(json.loads(line) for line in results.read_text().splitlines())  # the torn line is gone
    assert_same_outputs(cut, uninterrupted)


def test_cli_time_limit_and_errors(tmp_path, capsys):
    from m2ib.cli import main

    code = main(
        [
            "evaluate",
            "--model",
            "random-tiny",
            "--data",
            "shapes:test:2",
            "--methods",
            "gradcam",
            "--metrics",
            "confidence",
            "--out",
            str(tmp_path / "t"),
            "--time-limit",
            "0",
        ]
    )
    assert code == 3 and "partial run" in (tmp_path / "t" / "summary.md").read_text()
    header, _ = read_results(tmp_path / "t" / "results.jsonl")  # the command that reproduces the results
    assert header["command"] == (
        f"m2ib evaluate --model random-tiny --data shapes:test:2 --methods gradcam "
        f"--metrics confidence --out {tmp_path / 't'}"
    )
    assert main(["evaluate", "--data", "nothing.tsv", "--out", str(tmp_path / "x")]) == 2
    assert main(["evaluate", "--data", "shapes:test:2", "--metrics", "speed", "--out", str(tmp_path / "y")]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    """Two runs must never append to (or repair the tail of) one results file: the second fails
    at once with exit code 2; the lock dies with its holder, so a killed run never blocks."""
    from m2ib.cli import main

    out = tmp_path / "run"
    args = [
        "evaluate",
        "--model",
        "random-tiny",
        "--data",
        "shapes:test:2",
        "--methods",
        "gradcam",
        "--metrics",
        "confidence",
        "--out",
        str(out),
    ]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom m2ib.fileio import folder_lock\n"
            "with folder_lock(sys.argv[1], 'test'):\n    print('held', flush=True)\n"
            "    sys.stdin.read()",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # holds the lock until killed
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"in use by another test (pid {holder.pid})" in err and len(err.strip().splitlines()) == 1
        assert not (out / "results.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0 and len(_pairs(out)) == 2  # the killed holder's lock is gone


def test_batched_rows_give_the_same_numbers(backend, mscxr, tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 10 + i, size=(30 + 9 * i, 50))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a red circle\t0.png\na blue star and a green square\t1.png\nnothing\tmissing.png\na dog\t2.png\n")
    table = load_table(str(tsv))
    one = run_evaluation(
        backend, table, ["m2ib", "gradcam"], METRICS, FAST, 0, tmp_path / "one", progress=False, report=False
    )
    three = run_evaluation(
        backend,
        table,
        ["m2ib", "gradcam"],
        METRICS,
        FAST,
        0,
        tmp_path / "three",
        progress=False,
        report=False,
        batch_size=3,
    )  # a batch with a bad row, then one of 1
    assert one.evaluated == three.evaluated == 6 and len(one.bad) == len(three.bad) == 1
    by_key = {(r["row"], r["method"]): r["metrics"] for r in one.records}
    for record in three.records:
        for name, value in by_key[(record["row"], record["method"])].items():
            assert record["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), name
    with pytest.raises(InputError, match="batch size"):
        run_evaluation(backend, table, ["gradcam"], METRICS, FAST, 0, tmp_path / "x", batch_size=0)


def test_local_run_merges_part_files(backend, mscxr, tmp_path):
    """A local run resuming a Ray run's folder counts its part files once and merges them."""
    from m2ib.evaluation.runner import read_run, write_part

    table = load_table(str(mscxr))
    first = run_evaluation(backend, table, ["gradcam"], METRICS, FAST, 0, tmp_path, progress=False, report=False)
    results = tmp_path / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:2]))  # keep the provenance and the first row's record
    part = write_part(tmp_path, [json.loads(lines[2])])  # the second row's record, as an actor wrote it
    assert part.parent.name == "parts" and len(read_run(tmp_path)[1]) == 2
    again = run_evaluation(backend, table, ["gradcam"], METRICS, FAST, 0, tmp_path, progress=False, report=False)
    assert again.evaluated == 0 and again.skipped == len(first.records)
    assert not (tmp_path / "parts").exists()
    header, records = read_results(results)
    assert [r["row"] for r in records] == [r["row"] for r in first.records]


def test_roar_through_the_runner(tmp_path, monkeypatch):
    """`--metrics roar` on the shapes world: records in results.jsonl, the ROAR+ table in the
    summary, the map cache gone, and a re-run with nothing left to do retrains nothing."""
    import dataclasses

    from conftest import SMALL

    import m2ib
    from m2ib.metrics import roar as R
    from m2ib.models import random_clip

    model, tokenizer = random_clip(dataclasses.replace(SMALL, image_size=64, patch_size=16), seed=1)
    backend = m2ib.load(model, tokenizer=tokenizer)
    monkeypatch.setitem(R.BUDGETS, "tiny", R.RoarBudget("tiny", train=12, test=6, ks=(50,), steps=2, batch_size=4))
    table = load_table("shapes:test:2", size=64)
    config = ["roar"]
    out = tmp_path / "roar"
    run_evaluation(backend, table, ["saliency", "gradcam"], config, None, 0, out, progress=False)
    _, records = read_results(out / "results.jsonl")
    assert [(r["method"], r["k"]) for r in records] == [("none", 0), ("saliency", 50), ("gradcam", 50), ("random", 50)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["budget"] == "tiny" for r in records)
    assert "ROAR" in (out / "summary.md").read_text() and not (out / "roar-maps").exists()
    monkeypatch.setattr(R, "retrain_accuracy", lambda *a, **k: pytest.fail("retrained a finished run"))
    run_evaluation(backend, table, ["saliency", "gradcam"], config, None, 0, out, progress=False)


def test_roar_table_orders_methods_with_the_control_last():
    from m2ib.evaluation.report import roar_table

    def rec(method, k, acc):
        return {"kind": "roar", "method": method, "k": k, "accuracy": acc, "colour_accuracy": acc, "budget": "tiny"}

    # a run resumed method by method: rise's records come after the control's
    records = [rec("none", 0, 0.5), rec("m2ib", 50, 0.2), rec("random", 50, 0.4), rec("rise", 50, 0.1)]
    table = roar_table(records, ["m2ib", "rise"])
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["method", "m2ib", "rise", "random"]
    assert "| rise | 0.100 / 0.100 | 0.100 / 0.100 |" in table


@pytest.mark.parametrize("run", ["shapes", "sanity", "roar"])
def test_committed_runs_still_resume_and_summarise_the_same(run):
    """The README's runs in docs/evaluation were written by earlier code (MetricConfig, which
    recorded every metric's options): the metric protocol this code records for the same command
    matches theirs (so the same command resumes them), and their summary tables come out as
    committed (keys, directions, tables, ROAR+ section)."""
    import json
    import shlex

    from m2ib.cli import build_parser
    from m2ib.cli.evaluate import chosen_metrics
    from m2ib.evaluation.provenance import same_metrics
    from m2ib.evaluation.report import complete_records, summarise, summary_csv, summary_markdown
    from m2ib.metrics import metrics_record

    folder = Path(__file__).resolve().parents[2] / "docs" / "evaluation" / run
    header, records = read_results(folder / "results.jsonl")
    recorded = header["metrics"]
    args = build_parser().parse_args(shlex.split(header["command"])[1:])
    now = json.loads(json.dumps(metrics_record(chosen_metrics(args))))
    assert same_metrics(recorded, now) and set(now) < set(recorded)  # the options of metrics not chosen: left out
    methods = header["methods"]
    records = complete_records(records, methods)
    rows = summarise(records, methods)
    assert summary_csv(rows) == (folder / "summary.csv").read_text()
    committed = (folder / "summary.md").read_text()
    tables = summary_markdown(header, rows, records, [], methods)
    start = "Each cell" if "Each cell" in committed else "## ROAR+"
    assert tables[tables.index(start) :] == committed[committed.index(start) :]
