"""``m2ib tune`` on a generative VLM, on a saved random tiny LLaVA (offline): the grid's maps are
``explain_answer``'s at the same settings, its records feed the CLIP path's rule, a cut run resumes
to the uninterrupted run's outputs, and bad input is one line before the model loads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import m2ib
from m2ib.cli import main
from m2ib.errors import InputError
from m2ib.generative import generative_backend
from m2ib.tuning import answer_fits
from m2ib.tuning.answer_data import read_vqa
from m2ib.tuning.answer_fits import randomised_above_site
from m2ib.tuning.answer_tune import AnswerTuneRequest, answer_tune, read_answer_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generative"))
from tiny_llava import tiny_llava  # noqa: E402

PROMPT = "<image> what is in the image ?"
FAST = {"steps": 3, "samples": 2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gentune")
    model, processor = tiny_llava(seed=0)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy()).save(folder / f"s{i}.png")
    rows = [("s0.png", PROMPT, "a red circle"), ("s1.png", PROMPT, ""), ("s2.png", PROMPT, "blue square")]
    (folder / "vqa.tsv").write_text("image\tprompt\tanswer\n" + "".join("\t".join(r) + "\n" for r in rows))
    return folder


def request(saved: Path, out: Path, **kw) -> AnswerTuneRequest:
    base = {"model": str(saved / "model"), "data": str(saved / "vqa.tsv"), "out": out, "layers": (0, 1)}
    base.update(betas=(0.1, 1.0), settings=dict(FAST), progress=False)
    return AnswerTuneRequest(**{**base, **kw})


def points(out: Path) -> dict[str, dict]:
    lines = [json.loads(x) for x in (out / "points.jsonl").read_text().splitlines()[1:]]
    return {r["key"]: {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in lines}


@pytest.fixture(scope="module")
def whole(saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    return out, answer_tune(request(saved, out))


def test_the_grids_maps_are_explain_answers(saved, whole):
    out, outcome = whole
    model, processor = tiny_llava(seed=0)
    records = points(out)
    assert sorted(records) == [
        "image|published|0|0.1",
        "image|published|0|1",
        "image|published|1|0.1",
        "image|published|1|1",
    ]
    rows = read_vqa(saved / "vqa.tsv")
    for key, layer, beta in (("image|published|1|1", 1, 1.0), ("image|published|0|0.1", 0, 0.1)):
        for i, row in enumerate(rows):
            exp = m2ib.explain_answer(
                model, row.image, row.prompt, row.answer or None, processor=processor,
                image_layer=layer, beta=beta, seed=0, **FAST,
            )  # fmt: skip
            got = torch.tensor(records[key]["preview"][i])  # the map, rounded to 4 decimals
            torch.testing.assert_close(got, exp.image_map.float(), rtol=0, atol=6e-5)
            if not row.answer:  # the row without an answer explains the model's own, as explain_answer does
                assert json.loads((out / "points.jsonl").read_text().splitlines()[0])["generative"]["answers"][i] == (
                    exp.answer
                )
    # the maps at two sites differ: the site is a real grid axis
    assert records["image|published|1|1"]["preview"] != records["image|published|0|1"]["preview"]
    # m2ib.json's recommendation is read back as explain_answer's settings
    settings = read_answer_settings(out / "m2ib.json")
    assert settings == outcome.recommended and (not settings or settings["steps"] == 3)
    (out / "report.html").read_text().index("<table>")


def test_the_fits_at_a_point_are_exactly_explain_answers(saved):
    model, processor = tiny_llava(seed=0)
    backend = generative_backend(model, processor)
    rows = read_vqa(saved / "vqa.tsv")[:1]
    (item,) = answer_fits.prepare_items(backend, rows, 32)
    fit = answer_fits.fit_answer(backend, item.query, answer_fits.point_settings(FAST, 1, 1.0, 0))
    exp = m2ib.explain_answer(
        model, rows[0].image, PROMPT, rows[0].answer, processor=processor, image_layer=1, beta=1.0, **FAST
    )
    torch.testing.assert_close(fit.image_map, exp.image_map, rtol=0, atol=0)
    torch.testing.assert_close(fit.token_scores, exp.token_scores, rtol=0, atol=0)


HAND = {  # (site, beta) -> criteria: the rule must choose (1, 0.1) (docs/tune.md's rule by hand)
    (0, 0.1): {"sanity": 0.9, "faithfulness": 5.0, "agreement": 0.2, "constant": 0.0},  # front, not sane
    (0, 1.0): {"sanity": 0.2, "faithfulness": 1.0, "agreement": 0.5, "constant": 0.0},  # qualifies, worse ranks
    (1, 0.1): {"sanity": 0.3, "faithfulness": 2.0, "agreement": 0.9, "constant": 0.0},  # qualifies, best ranks
    (1, 1.0): {"sanity": 0.1, "faithfulness": -1.0, "agreement": 0.95, "constant": 0.0},  # front, not right
}


def test_the_generative_records_feed_the_rule(saved, tmp_path, monkeypatch):
    calls = []

    def point_record(backend, randomised, items, point, fixed, seed):
        calls.append(point.key)
        values = HAND[(point.layer, point.beta)]
        return {"key": point.key, "tower": "image", "variant": point.variant, "layer": point.layer,
                "beta": point.beta, "settings": {"image_layer": point.layer, "beta": point.beta},
                "criteria": values, "preview": [], "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(answer_fits, "point_record", point_record)
    outcome = answer_tune(request(saved, tmp_path / "out"))
    assert len(calls) == 4
    assert outcome.recommended == {**FAST, "image_layer": 1, "beta": 0.1}
    tower = json.loads((tmp_path / "out" / "m2ib.json").read_text())["tune"]["towers"]["image"]
    assert tower["chosen"] == "image|published|1|0.1"
    assert sorted(tower["qualifying"]) == ["image|published|0|1", "image|published|1|0.1"]
    assert tower["not_qualifying"]["image|published|0|0.1"].startswith("not sane")
    assert tower["not_qualifying"]["image|published|1|1"].startswith("not right")


def test_a_cut_run_resumes_to_the_uninterrupted_runs_outputs(saved, whole, tmp_path, monkeypatch):
    out, _ = whole
    cut = tmp_path / "cut"
    cut.mkdir()
    lines = (out / "points.jsonl").read_text().splitlines(keepends=True)
    (cut / "points.jsonl").write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])  # a torn third line
    scored = []
    real = answer_fits.point_record
    monkeypatch.setattr(answer_fits, "point_record", lambda *a: scored.append(a[3].key) or real(*a))
    answer_tune(request(saved, cut))
    assert len(scored) == 3 and json.loads(lines[1])["key"] not in scored
    assert points(cut) == points(out)
    assert json.loads((cut / "m2ib.json").read_text()) == json.loads((out / "m2ib.json").read_text())
    # another grid in the same folder is refused, not mixed
    with pytest.raises(InputError, match="another grid"):
        answer_tune(request(saved, cut, betas=(0.5,)))


def test_the_randomised_copy_differs_above_the_site_only():
    model, processor = tiny_llava(seed=0)
    backend = generative_backend(model, processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in (0, 1):
        copy = randomised_above_site(backend, layer, seed=0)
        state = copy.model.state_dict()
        for name, value in before.items():
            changed = not torch.equal(state[name], value)
            block = name.split("language_model.layers.")[1].split(".")[0] if "language_model.layers." in name else None
            above = name.startswith("lm_head") or (block is not None and int(block) >= layer)
            if above:
                assert changed, f"{name} kept at site {layer}"
            if not above:
                assert not changed, f"{name} changed at site {layer}"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the model given is untouched
    # a head tied to the input embeddings is untied: the embeddings below the site stay trained
    model.lm_head.weight = model.get_input_embeddings().weight
    copy = randomised_above_site(backend, 1, seed=0)
    assert torch.equal(copy.model.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert not torch.equal(copy.model.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": ()}, "the grid is empty"),
        ({"betas": ()}, "the grid is empty"),
        ({"betas": (0.0,)}, "positive"),
        ({"betas": (-1.0,)}, "positive"),
        ({"layers": (2,)}, "not a site of the language model's 2 blocks"),  # config.json, before the load
        ({"layers": (-1,)}, "not a site"),
        ({"rows": 1}, "2 or more"),
        ({"settings": {"beta": 1.0}}, "set by the grid"),
        ({"settings": {"steps": 0}}, "steps"),
        ({"data": "one.tsv"}, r"1 row\(s\); tune needs 2"),
        ({"data": "noprompt.tsv"}, "no prompt column"),
        ({"data": "noimage.tsv"}, "no image file"),
        ({"data": "badmask.tsv"}, "the mask is"),
        ({"data": "nomask.tsv"}, "no mask file"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(saved, tmp_path, monkeypatch, change, message):
    from m2ib.generative import loading

    (tmp_path / "one.tsv").write_text(f"image\tprompt\tanswer\n{saved / 's0.png'}\t{PROMPT}\ta\n")
    (tmp_path / "noprompt.tsv").write_text(f"image\tquestion\n{saved / 's0.png'}\tq\n{saved / 's1.png'}\tq\n")
    (tmp_path / "noimage.tsv").write_text(f"image\tprompt\nmissing.png\t{PROMPT}\ns0.png\t{PROMPT}\n")
    Image.new("L", (4, 8)).save(tmp_path / "small.png")
    two = f"image\tprompt\tmask\n{saved / 's0.png'}\t{PROMPT}\t\n{saved / 's1.png'}\t{PROMPT}\t"
    (tmp_path / "badmask.tsv").write_text(two + "small.png\n")
    (tmp_path / "nomask.tsv").write_text(two + "absent.png\n")
    monkeypatch.setattr(loading, "load_generative", lambda *a, **k: pytest.fail("the model loaded"))
    if "data" in change:
        change = {"data": str(tmp_path / change["data"])}
    with pytest.raises(InputError, match=message) as info:
        answer_tune(request(saved, tmp_path / "out", **change))
    assert len(str(info.value).splitlines()) == 1


def test_the_command_line_detects_the_generative_model(saved, tmp_path, capsys):
    data = tmp_path / "vqa.tsv"  # the prompt's literal \n is a line break; paths relative to the file
    shutil.copy(saved / "s0.png", tmp_path / "a.png")
    shutil.copy(saved / "s2.png", tmp_path / "b.png")
    data.write_text(
        "image\tprompt\tanswer\tnote\na.png\t<image> what\\n is in the image ?\tred\tx\nb.png\t" + PROMPT + "\tblue\t\n"
    )
    rows = read_vqa(data)
    assert rows[0].prompt == "<image> what\n is in the image ?" and rows[1].image == str(tmp_path / "b.png")
    args = ["tune", "--model", str(saved / "model"), "--data", str(data), "--layers", "1", "--betas", "1"]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "answer: " in printed and (tmp_path / "out" / "m2ib.json").exists()
    assert main([*args, "--out", str(tmp_path / "other"), "--towers", "image"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--towers does not apply" in err and len(err.splitlines()) == 1


def test_masks_give_pointing_and_energy_above_their_chance(saved, tmp_path):
    left, low = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    left[:5, :3], low[4:, 2:] = 255, 255  # asymmetric: a transposed or flipped mask is caught
    Image.fromarray(left).save(tmp_path / "m0.png")
    Image.fromarray(low).save(tmp_path / "m1.png")
    rows = [
        (saved / "s0.png", "a red circle", "m0.png"),
        (saved / "s1.png", "blue", "m1.png"),
        (saved / "s2.png", "red", ""),
    ]
    data = tmp_path / "vqa.tsv"
    data.write_text("image\tprompt\tanswer\tmask\n" + "".join(f"{i}\t{PROMPT}\t{a}\t{m}\n" for i, a, m in rows))
    out = tmp_path / "out"
    answer_tune(request(saved, out, data=str(data), layers=(1,), betas=(1.0,)))
    (record,) = points(out).values()
    model, processor = tiny_llava(seed=0)
    hits, energies = [], []
    for image, answer, mask_file in rows[:2]:  # a plain computation from explain_answer's map and the mask file
        exp = m2ib.explain_answer(
            model, str(image), PROMPT, answer, processor=processor, image_layer=1, beta=1.0, **FAST
        )
        mask = torch.from_numpy(np.array(Image.open(tmp_path / mask_file).convert("L")) > 127)
        hits.append(float(mask.flatten()[int(exp.image_map.flatten().argmax())]))
        energies.append(float((exp.image_map * mask).sum() / exp.image_map.sum()))
    assert record["criteria"]["pointing"] == pytest.approx(sum(hits) / 2)
    assert record["criteria"]["energy"] == pytest.approx(sum(energies) / 2, abs=1e-5)
    chance = json.loads((out / "m2ib.json").read_text())["tune"]["towers"]["image"]["chance"]
    area = (15 / 64 + 24 / 64) / 2
    assert chance == pytest.approx({"pointing": area, "energy": area})
