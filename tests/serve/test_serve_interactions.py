"""The viewer's "Word-region interactions" tab: a clicked word shows exactly its span_map, a box
drawn with two clicks shows exactly the words' region_scores (plain functions on a hand-made
Interaction, checked against hand computations), the pair is computed once, and the page does
all of it in a real browser (Debian's chromium through playwright)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2ib import serve
from m2ib.errors import InputError
from m2ib.interactions import Interaction

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio's queue
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

serve.private_environment()  # before gradio or gradio_client (and huggingface_hub) are imported

ROOT = Path(__file__).resolve().parents[2]
SCENE3 = ROOT / "examples" / "scene3.png"
CAPTION3 = "an orange triangle and a yellow circle"  # the scene's two objects
TRIANGLE = (46, 65, 27, 24)  # examples/scenes.json: the orange triangle's box (x, y, w, h)
FAST = {"text_layer": 0, "steps": 4}
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

# A hand-made pair: "red circle blue" on an 8 x 8 image, a 2 x 2 patch grid, one distinct grid per token.
GRIDS = torch.tensor(
    [
        [[9.0, 9.0], [9.0, 9.0]],  # <s>: never shown as a word
        [[4.0, -1.0], [0.5, 0.0]],  # red
        [[-2.0, 3.0], [1.0, 0.25]],  # circle
        [[0.0, 1.0], [-3.0, 2.0]],  # blue
        [[7.0, 7.0], [7.0, 7.0]],
    ]
)  # </s>


@pytest.fixture()
def pair() -> Interaction:
    return Interaction(
        text="red circle blue",
        tokens=["<s>", "red", "circle", "blue", "</s>"],
        image=torch.full((3, 8, 8), 0.5),
        matrix=GRIDS.clone(),
        offsets=[(0, 0), (0, 3), (4, 10), (11, 15), (0, 0)],
        special_tokens=(0, 4),
        similarity=0.3,
        method="exclip",
        model="hand-made",
    )


def _bilinear_by_hand(grid: torch.Tensor, size: int) -> np.ndarray:
    """A 2 x 2 grid upsampled to size x size as bilinear interpolation with half-pixel centres."""
    src = np.clip((np.arange(size) + 0.5) * 2 / size - 0.5, 0, 1)  # each pixel's place on the grid
    g = grid.numpy()
    rows = np.outer(1 - src, g[0]) + np.outer(src, g[1])  # [size, 2]: down the columns
    return rows[:, :1] * (1 - src)[None] + rows[:, 1:] * src[None]


def _scores_in(page_html: str) -> list[float]:
    return [float(v) for v in re.findall(r'class="m2ib-ix-tok" data-index="\d+" data-score="([^"]+)"', page_html)]


# ----------------------------------------------------------------------------------------------
# Clicks as plain functions, on the hand-made pair.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, word", [(0, "red"), (1, "circle"), (2, "blue")])
def test_clicking_word_k_shows_its_span_map(pair, k, word):
    shown = serve.select_word(pair, serve.View(), k)
    assert shown.view.selected == (k + 1,)  # the k-th word is token k + 1 (after <s>)
    np.testing.assert_allclose(shown.map.numpy(), _bilinear_by_hand(GRIDS[k + 1], 8), atol=1e-6)
    assert torch.equal(shown.map, pair.span_map(word))
    assert shown.caption == [(t, "selected" if j == k else None) for j, t in enumerate(["red ", "circle ", "blue"])]
    assert f"**{word}**" in shown.note and f"sum {float(GRIDS[k + 1].sum()):+.3g}" in shown.note
    # The picture: the map over the image, enlarged 48x (384 px); red where the word's patch is
    # positive, blue where negative, as large as the pair's largest |word score| (4) says.
    picture = np.asarray(shown.picture, dtype=float)
    assert shown.picture.size == (384, 384) and serve.picture_scale(pair) == 48
    for (r, c), value in np.ndenumerate(GRIDS[k + 1].numpy()):
        red, _, blue = picture[7 * r * 48 + 8, 7 * c * 48 + 8]  # in a corner pixel, whose value is the grid's
        if value >= 2:
            assert red > blue + 50
        elif value <= -2:
            assert blue > red + 50


def test_a_phrase_is_the_sum_of_its_words(pair):
    first = serve.select_word(pair, serve.View(), 0)
    both = serve.select_word(pair, first.view, 2, extend=True)
    assert both.view.selected == (1, 3)
    np.testing.assert_allclose(both.map.numpy(), _bilinear_by_hand(GRIDS[1] + GRIDS[3], 8), atol=1e-6)
    assert [label for _, label in both.caption] == ["selected", None, "selected"]
    assert serve.select_word(pair, both.view, 0, extend=True).view.selected == (3,)  # a second click removes it
    typed = serve.select_phrase(pair, serve.View(), " circle blue ")
    assert typed.view.selected == (2, 3)
    np.testing.assert_allclose(typed.map.numpy(), _bilinear_by_hand(GRIDS[2] + GRIDS[3], 8), atol=1e-6)
    with pytest.raises(InputError, match="'green' is not part of the text"):
        serve.select_phrase(pair, serve.View(), "green")
    with pytest.raises(InputError, match="word 3 is not in the caption"):
        serve.select_word(pair, serve.View(), 3)


@pytest.mark.parametrize(
    "corners, box, share",
    [
        (((10, 5), (3 * 48 + 47, 3 * 48 + 1)), (0, 0, 4, 4), 1.0),  # exactly the top-left patch
        (((3 * 48 + 47, 3 * 48 + 1), (10, 5)), (0, 0, 4, 4), 1.0),  # corners in the other order: the same box
        (((0, 0), (48 + 1, 3 * 48)), (0, 0, 2, 4), 0.5),  # half of that patch
    ],
)
def test_a_box_from_two_clicks_shows_the_words_region_scores(pair, corners, box, share):
    first = serve.click_image(pair, serve.View(selected=(1,)), *corners[0])
    assert first.view.corner is not None and first.view.box is None and first.box_scores is None
    assert "click the opposite corner" in first.scores
    second = serve.click_image(pair, first.view, *corners[1])
    assert second.view.box == box and second.view.corner is None and second.view.selected == (1,)
    assert torch.allclose(second.box_scores, share * GRIDS[:, 0, 0])  # by hand: the patch's share of each grid
    assert torch.allclose(second.box_scores, pair.region_scores(box))
    assert _scores_in(second.scores) == pytest.approx([share * float(v) for v in GRIDS[1:4, 0, 0]], rel=1e-5)
    assert re.findall(r'<span class="m2ib-word"[^>]*>([^<]+)</span>', second.scores) == ["red", "circle", "blue"]
    assert f"start/end tokens {share * 16:+.2e}" in second.scores  # <s> 9 and </s> 7, shown apart
    # The box is drawn: black and white edges around it on the enlarged picture.
    picture = np.asarray(second.picture)
    x, y, w, h = box
    assert (picture[y * 48 + 2, x * 48 + w * 48] == 0).all()  # the right edge, black
    third = serve.click_image(pair, second.view, 5, 5)  # a third click starts a new box
    assert third.view.box is None and third.view.corner == (0, 0)


def test_no_word_selected_shows_the_image(pair):
    shown = serve.render_view(pair, serve.View())
    assert shown.map is None and "Click a word" in shown.note
    plain = np.asarray(shown.picture, dtype=float)
    assert np.allclose(plain, 255 * 0.5, atol=1)


# ----------------------------------------------------------------------------------------------
# Computing the pair: once, from the registry's methods and their settings.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend():
    import m2ib

    return m2ib.load("shapes")


def test_compute_equals_interact_and_is_cached(backend, tmp_path, monkeypatch):
    from m2ib.interactions import REGISTRY, interact

    direct = interact(backend, SCENE3, CAPTION3, method="exclip", **FAST)  # the API, before counting calls
    calls = []
    original = REGISTRY["exclip"].interact
    monkeypatch.setattr(REGISTRY["exclip"], "interact", lambda *a, **k: calls.append(1) or original(*a, **k))
    cache = serve.InteractionCache()
    page_values = {"text_layer": "0", "steps": 4.0, "image_layer": -1, "chunk": 64, "normalise": True, "seed": 0}
    result, first, files, status = serve.compute_interaction(
        backend, str(SCENE3), CAPTION3, "exclip", page_values, cache=cache, workdir=tmp_path / "a"
    )
    assert torch.allclose(result.matrix, direct.matrix, atol=1e-7) and result.tokens == direct.tokens
    assert first.view.selected == (2,) and first.caption[1] == ("orange ", "selected")  # the first content word
    assert torch.equal(first.map, result.span_map("orange"))
    assert [Path(f).suffix for f in files] == [".png", ".npz", ".json"] and all(Path(f).is_file() for f in files)
    assert json.loads(Path(files[2]).read_text())["settings"]["text_layer"] == 0
    assert calls == [1] and "cache" not in status
    again, _, files_again, status = serve.compute_interaction(
        backend, str(SCENE3), CAPTION3, "exclip", {"text_layer": 0, "steps": 4}, cache=cache, workdir=tmp_path / "b"
    )
    assert again is result and calls == [1] and "from the cache" in status and files_again == files
    serve.compute_interaction(
        backend, str(SCENE3), CAPTION3, "exclip", {"text_layer": 0, "steps": 5}, cache=cache, workdir=tmp_path / "c"
    )
    assert calls == [1, 1]  # other settings: computed


def test_interaction_controls_come_from_the_registry():
    import dataclasses

    from m2ib.interactions import REGISTRY

    assert list(serve.registered_interactions()) == list(REGISTRY)
    for name, cls in REGISTRY.items():
        specs = serve.interaction_specs(name)
        assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls.Settings)]
        assert all(s.help for s in specs) and all(
            s.elem_id.startswith(f"m2ib-setting-interaction-{name}-") for s in specs
        )
    assert serve.clean_interaction_settings("exclip", {"text_layer": " 0 ", "steps": 3.0, "normalise": False}) == {
        "text_layer": 0,
        "steps": 3,
        "normalise": False,
    }
    with pytest.raises(InputError, match="steps=2.5 must be a whole number"):
        serve.clean_interaction_settings("exclip", {"steps": 2.5})
    with pytest.raises(InputError, match="unknown interaction method 'nope'"):
        serve.clean_interaction_settings("nope", {})


def test_bad_input_is_one_line(backend, tmp_path):
    for image, text, method, settings, message in (
        (None, CAPTION3, "exclip", {}, "no image"),
        (str(SCENE3), " ", "exclip", {}, "empty text"),
        (str(SCENE3), CAPTION3, "exclip", {"steps": 0}, "steps"),
    ):
        with pytest.raises(InputError, match=message) as info:
            serve.compute_interaction(backend, image, text, method, settings, workdir=tmp_path)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# The page in a real browser: click a word, draw a box.
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory, backend):
    demo = serve.build_app(backend, workdir=tmp_path_factory.mktemp("serve"))
    try:
        yield demo, serve.launch(demo, "127.0.0.1", _free_port(), block=False)
    finally:
        demo.close()


def test_the_button_is_an_api_endpoint(app, tmp_path):
    """Scripting: /interact takes the pair and the settings (METHOD_SETTING) and gives the first
    view, the downloads and the status; the .npz holds the same matrix as the API."""
    from gradio_client import Client, handle_file

    from m2ib.interactions import interact

    client = Client(app[1], verbose=False, download_files=str(tmp_path), httpx_kwargs={"timeout": 60})
    try:
        picture, caption, scores, note, files, status = client.predict(
            image=handle_file(str(SCENE3)),
            text=CAPTION3,
            method="exclip",
            exclip_text_layer=0,
            exclip_steps=4,
            api_name="/interact",
        )
    finally:
        client.close()
    assert [c["token"].strip() for c in caption] == CAPTION3.split() and "exCLIP" in status
    assert "**orange**" in note and Image.open(picture).size == (384, 384)
    matrix = np.load(next(f for f in files if f.endswith(".npz")))["matrix"]
    np.testing.assert_allclose(
        matrix, interact(app[0].m2ib_backend, SCENE3, CAPTION3, **FAST).matrix.numpy(), atol=1e-7
    )


def _shown_picture(page, tmp_path: Path, name: str) -> np.ndarray:
    """The picture the page shows, fetched from the page's own server."""
    src = page.eval_on_selector("#m2ib-ix-picture img", "e => e.src")
    target = tmp_path / name
    target.write_bytes(page.request.get(src).body())
    with Image.open(target) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium); CI installs it")
def test_interactions_tab_in_a_browser(app, backend, tmp_path):
    from playwright.sync_api import sync_playwright

    demo, url = app
    expected, _, _, _ = serve.compute_interaction(
        backend, str(SCENE3), CAPTION3, "exclip", {}, workdir=tmp_path / "expected"
    )
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
            page.get_by_role("tab", name="Word-region interactions").click()
            page.locator("#m2ib-ix-examples").get_by_text(CAPTION3).click()  # image and two-object caption
            page.wait_for_function(f"document.querySelector('#m2ib-ix-text textarea').value === {CAPTION3!r}")
            # the method's default settings: a run clicked right after filling the settings boxes sometimes
            # read other values (a picture that matched no word of the expected run, ~1 in 3 runs)
            page.click("#m2ib-ix-run")
            page.locator("#m2ib-ix-status").get_by_text("exCLIP").wait_for(timeout=90_000)
            tokens = page.locator("#m2ib-ix-caption .token")
            assert [t.strip() for t in tokens.all_inner_texts()] == CAPTION3.split()

            before = page.eval_on_selector("#m2ib-ix-picture img", "e => e.src")
            tokens.nth(CAPTION3.split().index("yellow")).click()  # (a) click a word: its region
            page.locator("#m2ib-ix-note").get_by_text("yellow", exact=True).wait_for()
            # the note and the picture are two outputs: wait for the picture to be replaced too
            page.wait_for_function(
                f"(() => {{ const e = document.querySelector('#m2ib-ix-picture img'); "
                f"return e && e.src !== {before!r} && e.naturalWidth > 0; }})()"
            )
            want = np.asarray(serve.select_word(expected, serve.View(), 5).picture, dtype=int)
            shown = _shown_picture(page, tmp_path, "word.png")
            assert shown.shape == want.shape and np.abs(shown - want).max() <= 1  # exactly yellow's span_map

            picture = page.locator("#m2ib-ix-picture img")  # (b) two clicks: a box
            box = picture.bounding_box()
            natural = page.eval_on_selector("#m2ib-ix-picture img", "e => e.naturalWidth")
            per_pixel = box["width"] / natural * serve.picture_scale(expected)  # screen px per input px
            x, y, w, h = TRIANGLE
            for px, py in ((x, y), (x + w - 1, y + h - 1)):
                picture.click(position={"x": (px + 0.5) * per_pixel, "y": (py + 0.5) * per_pixel})
                page.wait_for_timeout(300)
            page.locator("#m2ib-ix-scores .m2ib-ix-tok").first.wait_for()
            scores = page.eval_on_selector_all("#m2ib-ix-scores .m2ib-ix-tok", "es => es.map(e => e.dataset.score)")
            assert [float(s) for s in scores] == pytest.approx(
                [float(v) for v in expected.region_scores(TRIANGLE)[expected.words]], rel=1e-4, abs=1e-9
            )
            assert page.get_by_text(f"box x={x}, y={y}, {w}x{h} px").count() == 1
            page.locator("#m2ib-ix-files").get_by_text(".npz", exact=True).wait_for()
            page.wait_for_timeout(300)
            shot = tmp_path / "viewer_interactions.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if os.environ.get("M2IB_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copyfile(shot, ROOT / "docs" / "viewer_interactions.png")
    assert outside == []  # offline and private: the page asks nothing of other hosts
