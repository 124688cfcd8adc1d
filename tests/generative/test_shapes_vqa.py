"""The shipped shapes-vqa model (a LLaVA on the shapes world) and the code that trains it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from m2ib.datasets.shapes import COLOURS, SHAPES
from m2ib.errors import InputError
from m2ib.generative.loading import load_generative
from m2ib.models import BUILTIN_MODELS, SHAPES_DIR, SHAPES_VQA_DIR
from m2ib.training import vqa
from m2ib.training.vqa_data import QUESTION_KINDS, make_question


@pytest.fixture(scope="module")
def shipped():
    return load_generative("shapes-vqa")


def _clip_vision_state():
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(SHAPES_DIR).vision_model.state_dict()


def _same_tower(model) -> bool:
    mine, clip = model.model.vision_tower.state_dict(), _clip_vision_state()
    return mine.keys() == clip.keys() and all(torch.equal(mine[k], clip[k]) for k in clip)


def test_the_shipped_model_loads_by_name_with_the_shapes_clip_vision_tower(shipped):
    assert BUILTIN_MODELS["shapes-vqa"].directory == SHAPES_VQA_DIR
    assert type(shipped).__name__ == "LlavaBackend"
    assert _same_tower(shipped.model)  # put back from the shapes CLIP, not left at random
    # the shipped folder does not duplicate the CLIP's weights
    from safetensors import safe_open

    with safe_open(str(SHAPES_VQA_DIR / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith(vqa.VISION_PREFIX)]  # noqa: SIM118 (not a dict)


def test_the_processor_gives_one_token_per_patch(shipped):
    scene = vqa.scenes("test", 1)[0]
    inputs = shipped.processor(images=scene.to_pil(), text="USER: <image>\nwhat shape is red ? ASSISTANT:")
    patch = shipped.config.vision_config.patch_size
    count = int((torch.as_tensor(inputs["input_ids"]) == shipped.config.image_token_id).sum())
    assert count == (96 // patch) ** 2 == 256


def _fixed_test_accuracy(backend) -> tuple[int, int]:
    """(right, asked): one question of each kind each of the first 8 test scenes can ask."""
    rng = np.random.default_rng(0)
    right, total = 0, 0
    for scene in vqa.scenes("test", 8):
        for kind in QUESTION_KINDS:
            q = make_question(scene, kind, rng)
            if q is not None:
                total += 1
                right += backend.generate(scene.to_pil(), q.prompt, max_new_tokens=24) == q.answer
    return right, total


def test_the_shipped_model_answers_fixed_test_questions(shipped):
    # The shipped weights answer 28 of these 30 (greedy, deterministic); the test split's accuracy
    # is in docs/generative.md (200 per kind: colour 92 %, shape 100 %, exists 98 %, caption 80 %).
    # An untrained language model answers almost none exactly (the test below).
    right, total = _fixed_test_accuracy(shipped)
    assert total >= 24 and right >= 0.85 * total, f"{right}/{total} right"


def test_an_untrained_language_model_fails_the_fixed_questions(shipped):
    from m2ib.generative.base import generative_backend

    model, _ = vqa.build(vqa.VQAConfig())  # the shipped shape, the projector and Llama at random
    right, total = _fixed_test_accuracy(generative_backend(model, shipped.processor))
    assert right < total / 4, f"{right}/{total} right"


def test_explain_answer_runs_on_the_shipped_model(shipped):
    import m2ib

    scene = vqa.scenes("test", 1)[0]
    q = make_question(scene, "colour", np.random.default_rng(0)) or make_question(
        scene, "exists", np.random.default_rng(0)
    )
    exp = m2ib.explain_answer(shipped, scene.to_pil(), q.prompt, answer=q.answer, steps=2, samples=1)
    assert exp.image_map.shape == (96, 96) and torch.isfinite(exp.image_map).all()
    assert float(exp.image_map.std()) > 0


def test_a_changed_shapes_clip_is_refused(tmp_path):
    copy = tmp_path / "vqa"
    shutil.copytree(SHAPES_VQA_DIR, copy)
    record = json.loads((copy / "m2ib.json").read_text())
    record["vision_tower_from"]["sha256"] = "0" * 64
    (copy / "m2ib.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="has changed"):
        load_generative(str(copy))


def test_the_cached_feature_path_is_llavas_own_forward():
    model, processor = vqa.build(vqa.QUICK)
    items = vqa.scenes("train", 3)
    features = vqa.image_features(model, processor, items, progress=False)
    pairs = vqa.draw_questions(items, np.random.default_rng(0), 3, 2)
    ids, mask, _ = vqa.make_batch(processor.tokenizer, pairs, features.shape[1])
    index = torch.tensor([i for i, _ in pairs])
    with torch.no_grad():
        full = vqa.logits_from_features(model, features[index], ids, mask)
        shared, cut = vqa.shared_prefix_logits(model, features[index[::2]], ids, mask)
        scene, q = items[pairs[0][0]], pairs[0][1]
        inputs = processor(images=scene.to_pil(), text=q.prompt, return_tensors="pt")
        own = model(**inputs).logits[0]
    n = inputs["input_ids"].shape[1]
    assert torch.equal(inputs["input_ids"][0], ids[0, :n])  # the processor's tokens, image expanded alike
    torch.testing.assert_close(full[0, :n], own, atol=1e-3, rtol=0)  # float16 features: 1e-4 off
    torch.testing.assert_close(shared, full[:, cut:], atol=1e-5, rtol=0)


def test_questions_are_asked_only_where_the_answer_is_unique():
    rng = np.random.default_rng(1)
    for scene in vqa.scenes("val", 40):
        colours = [o.colour for o in scene.objects]
        shapes = [o.shape for o in scene.objects]
        q = make_question(scene, "colour", rng)
        assert (q is None) == all(shapes.count(s) > 1 for s in shapes)
        if q is not None:
            assert shapes.count(scene.objects[q.target].shape) == 1 and q.answer == colours[q.target]
        q = make_question(scene, "shape", rng)
        if q is not None:
            assert colours.count(scene.objects[q.target].colour) == 1 and q.answer == shapes[q.target]
        q = make_question(scene, "exists", rng)
        named = tuple(w for w in q.question.split() if w in COLOURS or w in SHAPES)
        assert (q.answer == "yes") == scene.has(*named)
        caption = make_question(scene, "caption", rng).answer
        assert caption.count(" a ") + caption.count(" an ") + 1 == len(scene.objects)


@pytest.mark.slow
def test_training_runs_end_to_end_and_the_result_loads(tmp_path):
    out = tmp_path / "model"
    assert vqa.main(["--out", str(out), "--quick", "--no-progress"]) == 0
    record = json.loads((out / "m2ib.json").read_text())
    assert record["training"]["steps_done"] == vqa.QUICK.steps
    backend = load_generative(str(out))
    assert _same_tower(backend.model)
    assert vqa.main(["--out", str(out), "--quick"]) == 2  # never writes over a folder
    again = tmp_path / "again"  # a warm start keeps the record of the run it started from
    assert vqa.main(["--out", str(again), "--quick", "--no-progress", "--init", str(out)]) == 0
    chained = json.loads((again / "m2ib.json").read_text())["training"]
    assert chained["init_record"] == record["training"] and chained["config"]["init"] == str(out)


def test_the_command_line_explains_an_answer_of_the_built_in_model(tmp_path):
    from m2ib.cli import main

    scene = vqa.scenes("test", 1)[0]
    scene.to_pil().save(tmp_path / "scene.png")
    q = make_question(scene, "caption", np.random.default_rng(0))
    args = ["explain", str(tmp_path / "scene.png"), q.prompt, "--answer", q.answer, "--model", "shapes-vqa"]
    assert main([*args, "--out", str(tmp_path / "out"), "--steps", "2", "--samples", "1"]) == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert record["answer"] == q.answer and record["family"] == "llava"


def test_a_built_in_clip_is_not_a_generative_model():
    with pytest.raises(InputError, match="not a generative model"):
        load_generative("random-tiny")


def test_clip_paths_refuse_the_generative_built_in_in_one_line_and_do_not_list_it(tmp_path, capsys):
    import m2ib
    from m2ib.auditing.control import check_control
    from m2ib.cli import main
    from m2ib.cli.common import model_help

    assert "shapes-vqa" not in m2ib.list_models() and m2ib.list_models(generative=True) == ["shapes-vqa"]
    assert "shapes-vqa" not in model_help()
    with pytest.raises(InputError, match="generative VLM.*--answer"):
        m2ib.load("shapes-vqa")
    with pytest.raises(InputError, match="--control shapes-vqa is a generative VLM"):
        check_control("shapes-vqa")
    assert main(["explain", "examples/scene3.png", "a red star", "--model", "random-tiny", "--answer", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a built-in CLIP, not a generative model" in err[0], err


def test_without_answer_the_command_line_explains_the_models_own_answer(tmp_path, capsys, shipped):
    from m2ib.cli import main

    scene = vqa.scenes("test", 1)[0]
    scene.to_pil().save(tmp_path / "scene.png")
    prompt = "USER: <image>\ndescribe the image . ASSISTANT:"
    args = ["explain", str(tmp_path / "scene.png"), prompt, "--model", "shapes-vqa", "--out", str(tmp_path / "out")]
    assert main([*args, "--steps", "2", "--samples", "1"]) == 0
    record = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert record["answer_source"] == "generated"
    assert record["answer"] == shipped.generate(scene.to_pil(), prompt)
    assert main(["explain", str(tmp_path / "scene.png"), "a red star", "--model", "shapes-vqa"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "<image>" in err[-1], err


def test_explain_answer_takes_the_built_in_name(shipped):
    import m2ib

    scene = vqa.scenes("test", 1)[0]
    q = make_question(scene, "caption", np.random.default_rng(0))
    by_name = m2ib.explain_answer("shapes-vqa", scene.to_pil(), q.prompt, answer=q.answer, steps=2, samples=1)
    by_backend = m2ib.explain_answer(shipped, scene.to_pil(), q.prompt, answer=q.answer, steps=2, samples=1)
    torch.testing.assert_close(by_name.token_scores, by_backend.token_scores, rtol=0, atol=0)
    with pytest.raises(InputError, match="a built-in CLIP, not a generative model"):
        m2ib.explain_answer("shapes", scene.to_pil(), q.prompt, answer=q.answer)


def test_the_viewer_opens_the_answer_tab_on_the_built_in_with_its_own_prompt_form(shipped):
    from m2ib.generative.loading import is_generative
    from m2ib.serve.answer import example_prompt

    assert is_generative("shapes-vqa") and not is_generative("shapes")
    prompt = example_prompt(shipped)
    assert prompt == "USER: <image>\ndescribe the image . ASSISTANT:"
    shipped.check_prompt(prompt)
    ids = shipped.tokenizer(prompt)["input_ids"]
    assert shipped.tokenizer.unk_token_id not in ids  # every word in its closed vocabulary


def test_question_kinds_are_drawn_with_their_weights_and_a_bad_spec_is_one_line(tmp_path, capsys):
    assert vqa.kind_weights("").tolist() == [0.25] * 4
    assert vqa.kind_weights("colour:2,exists:2").tolist() == pytest.approx([1 / 3, 1 / 6, 1 / 3, 1 / 6])
    items = vqa.scenes("train", 20)
    drawn = vqa.draw_questions(items, np.random.default_rng(0), 300, 2, "caption:0,shape:0")
    kinds = [q.kind for _, q in drawn]
    assert set(kinds) == {"colour", "exists"} and kinds.count("colour") > 200  # 1/2 weight, redrawn where not askable
    same = next(s for s in vqa.scenes("val", 50) if make_question(s, "colour", np.random.default_rng(0)) is None)
    with pytest.raises(ValueError, match="can ask none of these kinds"):  # not an endless loop
        vqa.draw_questions([same], np.random.default_rng(0), 1, 2, "colour:1,shape:0,exists:0,caption:0")
    for bad in ("color:2", "colour:x", "colour:0,shape:0,exists:0,caption:0"):
        with pytest.raises(ValueError, match="--kinds"):
            vqa.kind_weights(bad)
    assert vqa.main(["--out", str(tmp_path / "m"), "--quick", "--kinds", "color:2"]) == 2
    assert "--kinds" in capsys.readouterr().err and not (tmp_path / "m").exists()
