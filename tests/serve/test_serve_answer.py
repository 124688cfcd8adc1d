"""The viewer's "Answer" tab on a generative model (a saved random tiny LLaVA, tests/conftest.py):
the map, the per-word maps and the prompt's scores shown are exactly ``explain_answer``'s for the
same inputs and settings; bad input is one line; the page has the tab (and only it) on a
generative model, and a run fills it in a real browser (Debian's chromium through playwright)."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from m2ib import serve
from m2ib.errors import InputError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio's queue
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

serve.private_environment()  # before gradio or gradio_client (and huggingface_hub) are imported

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "<image> what is in the image ?"
ANSWER = "a red circle"
# what the page's controls send: numbers as floats, switches as booleans
PAGE = {"steps": 2.0, "samples": 1.0, "per_word": True, "prompt_side": True}
SAME = {"steps": 2, "samples": 1}
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]


@pytest.fixture(scope="module")
def llava(saved_llava):
    from m2ib.generative.loading import load_generative

    return load_generative(str(saved_llava / "model")), saved_llava / "scene.png"


def _overlay(image: torch.Tensor, image_map: torch.Tensor) -> np.ndarray:
    from m2ib.viz.overlay import overlay, to_pil

    return np.asarray(to_pil(overlay(image, image_map)), dtype=int)


def _native(picture) -> np.ndarray:
    """A picture the page enlarged by a whole factor (nearest neighbour), back at the model's 8 px."""
    shown = np.asarray(picture, dtype=int)
    step = shown.shape[0] // 8
    assert shown.shape[:2] == (8 * step, 8 * step) and step > 1
    return shown[::step, ::step]


def test_the_tab_shows_explain_answers_maps(llava, tmp_path):
    from m2ib.generative import explain_answer

    backend, scene = llava
    out = serve.explain_answer_page(backend, str(scene), PROMPT, ANSWER, "m2ib", PAGE, workdir=tmp_path)
    api = explain_answer(backend, scene, PROMPT, answer=ANSWER, **SAME)
    assert torch.equal(out.explanation.image_map, api.image_map)
    np.testing.assert_array_equal(_native(out.heatmap), _overlay(api.image, api.image_map))
    assert [w for _, w in out.words] == api.words == ANSWER.split()
    for (picture, _), word_map in zip(out.words, api.word_maps, strict=True):
        np.testing.assert_array_equal(_native(picture), _overlay(api.image, word_map))
    shown = [float(v) for v in re.findall(r'data-score="([0-9.]+)"', out.prompt)]
    assert shown == pytest.approx((api.prompt_scores / api.prompt_scores.max()).tolist(), abs=1e-4)
    assert f"> {ANSWER}" in out.answer and "as typed" in out.answer
    saved = np.load(next(f for f in out.files if f.endswith(".npz")))
    np.testing.assert_array_equal(saved["image_map"], api.image_map.numpy())
    assert "M2IB" in out.status and Path(out.figure).is_file()


def test_the_settings_and_the_method_reach_the_fit(llava, tmp_path):
    from m2ib.generative import explain_answer

    backend, scene = llava
    page = {**PAGE, "per_word": False, "prompt_side": False, "image_layer": 1.0}
    out = serve.explain_answer_page(backend, str(scene), PROMPT, ANSWER, "m2ib", page, workdir=tmp_path / "a")
    api = explain_answer(
        backend, scene, PROMPT, answer=ANSWER, per_word=False, prompt_side=False, image_layer=1, **SAME
    )
    assert torch.equal(out.explanation.token_scores, api.token_scores) and out.words == []
    assert "not scored" in out.prompt and "no per-word maps" in out.answer
    at_input = explain_answer(backend, scene, PROMPT, answer=ANSWER, per_word=False, prompt_side=False, **SAME)
    assert not torch.allclose(out.explanation.token_scores, at_input.token_scores)  # the site was moved
    out = serve.explain_answer_page(backend, str(scene), PROMPT, ANSWER, "occlusion", {"window": 2.0}, workdir=tmp_path)
    api = explain_answer(backend, scene, PROMPT, answer=ANSWER, method="occlusion", window=2)
    assert out.explanation.method == "occlusion" and torch.equal(out.explanation.image_map, api.image_map)


def test_an_empty_answer_explains_the_models_own(llava, tmp_path):
    from m2ib.generative import explain_answer

    backend, scene = llava
    out = serve.explain_answer_page(
        backend, str(scene), PROMPT, "  ", "m2ib", PAGE, max_new_tokens=3.0, workdir=tmp_path
    )
    api = explain_answer(backend, scene, PROMPT, max_new_tokens=3, **SAME)
    assert api.answer_source == out.explanation.answer_source == "generated" and out.explanation.answer == api.answer
    assert f"> {api.answer}" in out.answer and "the model's own" in out.answer
    assert torch.equal(out.explanation.image_map, api.image_map)


@pytest.mark.parametrize(
    ("image", "prompt", "answer", "settings", "message"),
    [
        ("scene", "what is in the image ?", ANSWER, PAGE, "image placeholder '<image>' exactly once"),
        ("scene", "<image> <image> what ?", ANSWER, PAGE, "exactly once (found 2)"),
        ("scene", PROMPT, "<image>", PAGE, "the answer contains the image placeholder"),
        ("scene", " ", ANSWER, PAGE, "empty prompt"),
        (None, PROMPT, ANSWER, PAGE, "no image"),
        ("scene", PROMPT, ANSWER, {**PAGE, "steps": 0.0}, "steps=0 must be a positive integer"),
        ("scene", PROMPT, ANSWER, {**PAGE, "image_layer": 2.0}, "image_layer"),  # past the 2 blocks: after the load
    ],
)
def test_bad_input_is_one_line(llava, tmp_path, image, prompt, answer, settings, message):
    backend, scene = llava
    with pytest.raises(InputError) as caught:
        serve.explain_answer_page(
            backend, str(scene) if image else None, prompt, answer, "m2ib", settings, workdir=tmp_path
        )
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_answer_controls_come_from_the_registry():
    from m2ib.generative.methods import ANSWER_METHODS
    from m2ib.settings import fields_of

    for name, cls in ANSWER_METHODS.items():
        specs = serve.answer_specs(name)
        assert [s.name for s in specs] == [f.name for f in fields_of(cls.Settings)]
    controls = {s.name: s.field.control for s in serve.answer_specs("m2ib")}
    assert controls["per_word"] == controls["prompt_side"] == "checkbox" and controls["image_layer"] == "integer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory, saved_llava):
    demo = serve.build_app(str(saved_llava / "model"), workdir=tmp_path_factory.mktemp("serve"))
    try:
        yield demo, serve.launch(demo, "127.0.0.1", _free_port(), block=False)
    finally:
        demo.close()


def _tabs(demo) -> list[str]:
    import gradio as gr

    return [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]


def test_a_generative_model_gets_the_answer_tab_only(app, backend, tmp_path):
    demo, _ = app
    assert demo.m2ib_generative and _tabs(demo) == ["Answer"]
    assert [k for k in demo.m2ib_answer_keys if k[0] == "answer-m2ib"][-1] == ("answer-m2ib", "image_layer")
    clip = serve.build_app(backend, workdir=tmp_path)  # a CLIP model: its two tabs, no Answer tab
    assert not clip.m2ib_generative and _tabs(clip) == ["Explain", "Word-region interactions"]
    with pytest.raises(InputError, match="settings file"):
        serve.build_app(demo.m2ib_backend, settings={"m2ib": {"steps": 2}}, workdir=tmp_path)


def test_m2ib_serve_on_a_generative_folder(saved_llava, monkeypatch, capsys):
    from m2ib.cli import serve as serve_command

    served = []
    monkeypatch.setattr(serve_command, "launch", lambda demo, *a, **k: served.append(demo) or "http://127.0.0.1:0/")
    assert serve_command.main(["--model", str(saved_llava / "model"), "--port", "0"]) == 0
    assert served and served[0].m2ib_generative and _tabs(served[0]) == ["Answer"]
    assert "answer methods: m2ib, saliency" in capsys.readouterr().err  # the command's log line


def test_the_button_is_an_api_endpoint(app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo, url = app
    client = Client(url, verbose=False, download_files=str(tmp_path), httpx_kwargs={"timeout": 60})
    scene = str(Path(demo.m2ib_backend.model.config._name_or_path).parent / "scene.png")
    try:
        args = dict(image=handle_file(scene), prompt=PROMPT, answer=ANSWER, method="m2ib", api_name="/answer")
        explained, heatmap, words, prompt_words, figure, files, status = client.predict(
            **args, answer_m2ib_steps=2, answer_m2ib_samples=1
        )
        with pytest.raises(AppError, match="image placeholder"):
            client.predict(**{**args, "prompt": "what is it ?"}, answer_m2ib_steps=2, answer_m2ib_samples=1)
    finally:
        client.close()
    assert ANSWER in explained and len(words) == 3 and "M2IB" in status
    assert sorted(Path(f).suffix for f in files) == [".json", ".npz", ".png"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium); CI installs it")
def test_answer_tab_in_a_browser(app, tmp_path):
    from playwright.sync_api import sync_playwright

    demo, url = app
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith((url.rstrip("/"), "data:", "blob:")) else None,
            )
            page.goto(url)
            assert page.get_by_role("tab", name="Explain").count() == 0
            page.locator("#m2ib-answer-examples").locator("img").first.click()  # an example scene and the prompt
            page.wait_for_function("document.querySelector('#m2ib-answer-image img')?.naturalWidth > 0")
            page.fill("#m2ib-answer-prompt textarea", PROMPT)
            page.fill("#m2ib-answer-answer textarea", ANSWER)
            page.click("#m2ib-answer-run")
            page.locator("#m2ib-answer-status").get_by_text("M2IB").wait_for(timeout=90_000)
            page.wait_for_function("document.querySelector('#m2ib-answer-heatmap img')?.naturalWidth > 0")
            page.locator("#m2ib-answer-words img").nth(2).wait_for()
            assert page.locator("#m2ib-answer-explained").get_by_text(ANSWER).count() == 1
            words = page.eval_on_selector_all("#m2ib-answer-prompt-words .m2ib-tok", "es => es.length")
            assert words == len(PROMPT.split()) - 1  # every word but the image slot
            page.locator("#m2ib-answer-files").get_by_text(".npz", exact=True).wait_for()
            page.wait_for_timeout(500)
            shot = tmp_path / "viewer_answer.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert outside == []  # offline and private: the page asks nothing of other hosts
