"""The web viewer (m2ib serve): callbacks as plain functions, the running app through
gradio_client, and the page in a real browser (Debian's chromium driven by playwright)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2ib import serve
from m2ib.cli import serve as serve_command
from m2ib.errors import InputError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio's queue
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

serve.private_environment()  # before gradio or gradio_client (and huggingface_hub) are imported

ROOT = Path(__file__).resolve().parents[2]
SCENES = json.loads((ROOT / "examples" / "scenes.json").read_text())
SCENE1 = ROOT / "examples" / "scene1.png"
CAPTION1 = SCENES[0]["caption"]
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


@pytest.fixture(scope="module")
def backend():
    import m2ib

    return m2ib.load("shapes")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (a decompression bomb's shape, without the data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    return path


# ----------------------------------------------------------------------------------------------
# Callbacks as plain functions.
# ----------------------------------------------------------------------------------------------
def test_private_environment_keeps_what_the_user_set():
    env = {"HF_HUB_OFFLINE": "0"}
    added = serve.private_environment(env)
    assert env == {"HF_HUB_OFFLINE": "0", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    assert set(added) == {"GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY"}


def test_missing_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(os.sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert serve_command.main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'm2ib[viewer]'" in err and "Traceback" not in err


def test_gradio_5_is_refused(monkeypatch):
    gr = serve.import_gradio()
    monkeypatch.setattr(gr, "__version__", "5.50.0")
    with pytest.raises(serve.M2IBError, match="needs Gradio 6 or newer"):
        serve.import_gradio()


def test_bad_port_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(serve_command, "build_app", lambda *a, **k: pytest.fail("must not get this far"))
    assert serve_command.main(["--port", "70000"]) == 2
    assert "--port 70000: must be a number >= 0 and <= 65535" in capsys.readouterr().err


def test_cli_defaults_are_private():
    args = serve_command.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, "shapes")
    assert (args.max_upload_mb, args.max_megapixels) == (20, 40)


def test_explain_pair_outputs(backend, tmp_path):
    out = serve.explain_pair(
        backend, str(SCENE1), CAPTION1, "m2ib", {**FAST, "vision_layer": "", "text_layer": None}, workdir=tmp_path
    )
    assert out.heatmap.size == tuple(backend.geometry.image_size)[::-1]
    assert -1.0 <= float(out.similarity) <= 1.0
    assert [Path(f).suffix for f in out.files] == [".png", ".npz", ".json"] and out.figure == out.files[0]
    assert all(Path(f).is_file() and Path(f).parent == tmp_path for f in out.files)
    saved = json.loads(Path(out.files[2]).read_text())
    assert saved["settings"]["steps"] == 2 and saved["text"] == CAPTION1 and saved["image"] == "scene1.png"
    assert set(np.load(out.files[1]).files) >= {"image_map", "text_map"}
    words = [t for i, t in enumerate(saved["tokens"]) if i not in saved["special_tokens"]]
    for word in words:
        assert f'">{word}</span><span class="m2ib-score"' in out.tokens
    assert "M2IB" in out.status


def test_a_truncated_text_is_noted(backend, tmp_path):
    out = serve.explain_pair(
        backend, str(SCENE1), " ".join([CAPTION1] * 20), "m2ib", {"steps": 1, "samples": 1}, workdir=tmp_path
    )
    assert "⚠" in out.status and "tokens were dropped" in out.status


def test_compare_all_survives_a_failing_method(backend, tmp_path, monkeypatch, caplog, registered):
    from m2ib.methods import M2IB, REGISTRY

    class Broken(M2IB):
        name, title = "broken-test", "Broken"

        def attribute(self, *args, **kwargs):
            raise RuntimeError("boom")

    class ImageOnly(M2IB):
        name, title, modalities = "image-only-test", "Image only", ("image",)

    registered(REGISTRY, Broken)
    registered(REGISTRY, ImageOnly)
    chosen = {name: REGISTRY[name] for name in ("m2ib", Broken.name, ImageOnly.name)}
    monkeypatch.setattr(serve.callbacks, "registered_methods", lambda: chosen)  # the real baselines are too slow
    with caplog.at_level(logging.WARNING, logger="m2ib.serve"):
        out = serve.explain_pair(
            backend,
            str(SCENE1),
            CAPTION1,
            serve.COMPARE_ALL,
            {"m2ib": FAST, "broken-test": FAST, "image-only-test": FAST},
            workdir=tmp_path,
        )
    assert "failed: Broken: RuntimeError: boom" in out.status and "compared 2 of 3" in out.status
    assert [r.getMessage() for r in caplog.records] == ["compare all: broken-test failed: RuntimeError: boom"]
    # One Comparison, saved as m2ib explain --method a,b writes it: figure grid, npz, json.
    assert [Path(f).name for f in out.files] == ["scene1_compare.png", "scene1_compare.npz", "scene1_compare.json"]
    saved = json.loads(Path(out.files[2]).read_text())
    assert list(saved["methods"]) == ["m2ib", "image-only-test"] and saved["image"] == "scene1.png"
    assert saved["failed"] == {"broken-test": "RuntimeError: boom"}
    maps = np.load(out.files[1])
    assert {"image", "m2ib/image_map", "m2ib/text_map", "image-only-test/image_map"} <= set(maps.files)
    assert "image-only-test/text_map" not in maps.files
    with Image.open(out.figure) as fig:  # three rows: taller than the one-method figure
        assert fig.size[1] > 400
    # A flat settings mapping applies to every method that has the setting.
    monkeypatch.setattr(serve.callbacks, "registered_methods", lambda: {"m2ib": REGISTRY["m2ib"]})
    flat = serve.explain_pair(backend, str(SCENE1), CAPTION1, serve.COMPARE_ALL, FAST, workdir=tmp_path / "flat")
    saved = json.loads((tmp_path / "flat" / "scene1_compare.json").read_text())
    assert saved["methods"]["m2ib"]["settings"]["steps"] == 2
    assert "compared 1 of 1" in flat.status


@pytest.mark.parametrize(
    "case, message",
    [
        ("corrupt", "cannot read this file as an image"),
        ("truncated", "damaged or incomplete"),
        ("empty_file", "the file is empty"),
        ("too_many_bytes", "the limit is 0.001 MB"),
        ("bomb", "the limit is 40 megapixels"),
        ("huge_bomb", "the limit is 40 megapixels"),
        ("no_image", "no image"),
        ("empty_text", "empty text"),
        ("huge_text", "the limit is 10000"),
        ("unknown_method", "unknown method"),
        ("bad_setting", "vision_layer='x'"),
    ],
)
def test_bad_input_is_one_clear_message(backend, tmp_path, case, message):
    image, text, method, settings, limit = str(SCENE1), CAPTION1, "m2ib", dict(FAST), 20e6
    if case == "corrupt":
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    elif case == "truncated":
        image = tmp_path / "cut.png"
        image.write_bytes(SCENE1.read_bytes()[:2000])
    elif case == "empty_file":
        image = tmp_path / "empty.png"
        image.write_bytes(b"")
    elif case == "too_many_bytes":
        limit = 1000
    elif case == "bomb":  # 50 megapixels: over m2ib's limit, under Pillow's
        image = _png_header_only(tmp_path / "bomb.png", 10_000, 5_000)
    elif case == "huge_bomb":  # 10 gigapixels: Pillow itself refuses it
        image = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    elif case == "no_image":
        image = None
    elif case == "empty_text":
        text = "   "
    elif case == "huge_text":
        text = "a red circle " * 1000
    elif case == "unknown_method":
        method = "nope"
    elif case == "bad_setting":
        settings["vision_layer"] = "x"
    with pytest.raises(InputError) as info:
        serve.explain_pair(
            backend,
            image if image is None else str(image),
            text,
            method,
            settings,
            workdir=tmp_path / "out",
            max_bytes=limit,
        )
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(tmp_path) not in str(info.value)  # names the file, not the server's folders


def test_setting_controls_come_from_the_registry(backend):
    import dataclasses

    from m2ib.methods import REGISTRY

    for name, cls in REGISTRY.items():
        specs = serve.setting_specs(backend, name)
        assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls.Settings)]
        assert all(s.help for s in specs)
        for s, f in zip(specs, dataclasses.fields(cls.Settings)):
            if f.default is None:
                assert s.value is None and s.auto.startswith("auto (model's recommended")
    m2ib_specs = {s.name: s for s in serve.setting_specs(backend, "m2ib")}
    assert m2ib_specs["steps"].value == 10 and m2ib_specs["precision"].choices == ("fp32", "bf16", "fp16")
    assert m2ib_specs["vision_beta"].value == backend.recommended["m2ib"]["vision_beta"]


def test_clean_settings():
    assert serve.clean_settings(
        "m2ib",
        {
            "vision_layer": "",
            "text_layer": " 2 ",
            "steps": 3.0,
            "lr": 0.5,
            "seed": None,
            "precision": "fp32",
            "cuda_graphs": False,
        },
    ) == {"text_layer": 2, "steps": 3, "lr": 0.5, "precision": "fp32", "cuda_graphs": False}
    # An optional text setting left empty is auto (None), not the empty text (M2IB's reference warned).
    assert serve.clean_settings("m2ib", {"reference": " ", "bottleneck": "published"}) == {"bottleneck": "published"}
    assert serve.clean_settings("m2ib", {"reference": "shapes:val:4"}) == {"reference": "shapes:val:4"}
    with pytest.raises(InputError, match="steps=2.5 must be a whole number"):
        serve.clean_settings("m2ib", {"steps": 2.5})
    with pytest.raises(InputError, match="cuda_graphs='banana' must be true or false"):
        serve.clean_settings("m2ib", {"cuda_graphs": "banana"})
    with pytest.raises(InputError, match="lr=inf must be a finite number"):
        serve.clean_settings("m2ib", {"lr": "inf"})


def test_tokens_html_escapes_and_shades():
    page = serve.tokens_html(["<s>", "a", "<b>x</b>", "</s>"], [0.0, 1.0, 0.0, 0.0], special=(0, -1))
    assert "<b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert 'data-score="1.0000"' in page and page.count("m2ib-special") == 2
    assert "does not explain the text" in serve.tokens_html(["a"], None)


def test_example_scenes_are_the_shipped_ones(tmp_path):
    scenes = serve.example_scenes(tmp_path)
    assert [c for _, c in scenes] == [s["caption"] for s in SCENES]
    assert all(Path(p).is_file() and Path(p).is_relative_to(tmp_path) for p, _ in scenes)


# ----------------------------------------------------------------------------------------------
# The running app, through gradio_client.
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory, backend):
    demo = serve.build_app(backend, workdir=tmp_path_factory.mktemp("serve"))
    try:
        url = serve.launch(demo, "127.0.0.1", _free_port(), block=False)
        assert url.startswith("http://127.0.0.1:")
        yield demo, url
    finally:
        demo.close()


@pytest.fixture()
def client(app, tmp_path):
    from gradio_client import Client

    client = Client(app[1], verbose=False, download_files=str(tmp_path), httpx_kwargs={"timeout": 30})
    try:
        yield client
    finally:
        client.close()


def _call(client, image, text, method="m2ib", **settings):
    from gradio_client import handle_file

    kwargs = {f"m2ib_{k}": v for k, v in {**FAST, **settings}.items()}
    job = client.submit(image=handle_file(str(image)), text=text, method=method, api_name="/explain", **kwargs)
    return job.result(timeout=90)


def test_app_explains_through_the_api(app, client):
    demo, _ = app
    heatmap, tokens, similarity, figure, files, status = _call(client, SCENE1, CAPTION1)
    with Image.open(heatmap) as im:
        assert im.size == tuple(demo.m2ib_backend.geometry.image_size)[::-1]
    assert all(f">{w}</span>" in tokens for w in CAPTION1.split())
    assert -1 <= float(similarity) <= 1 and "M2IB" in status
    assert sorted(Path(f).suffix for f in files) == [".json", ".npz", ".png"] and Path(figure).is_file()
    # Requests queue: one explanation at a time on the model.
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    explain = [fn for fn in fns if getattr(fn, "api_name", None) == "explain"]
    assert len(explain) == 1 and explain[0].concurrency_limit == 1


def test_app_reports_bad_input_and_keeps_serving(app, client, tmp_path, caplog):
    from gradio_client.exceptions import AppError

    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    for image, text, message in (
        (corrupt, CAPTION1, "holiday.jpg: cannot read this file as an image"),
        (SCENE1, "  ", "empty text"),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="m2ib.serve"), pytest.raises(AppError, match=message):
            _call(client, image, text)
        lines = [r.getMessage() for r in caplog.records if r.name == "m2ib.serve"]
        assert len(lines) == 1 and lines[0].startswith("rejected: ")
    *_, status = _call(client, SCENE1, CAPTION1)  # still serving
    assert "M2IB" in status


# ----------------------------------------------------------------------------------------------
# The page in a real browser.
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium); CI installs it")
def test_page_in_a_browser(app, tmp_path):
    from playwright.sync_api import sync_playwright

    demo, url = app
    backend = demo.m2ib_backend
    batch = backend.tokenize([CAPTION1])
    words = [t for i, t in enumerate(batch.tokens[0]) if i not in set(batch.special[0])]
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
            page.wait_for_selector("#m2ib-image input[type=file]", state="attached")
            page.click("#m2ib-settings button")  # the settings follow the method
            page.locator("#m2ib-setting-m2ib-steps").wait_for(state="visible")
            shown = (
                "n => new Set([...document.querySelectorAll(\"[id^='m2ib-settings-']\")]"
                ".filter(e => e.offsetParent !== null).map(e => e.id)).size === n"
            )
            page.click("#m2ib-method input")
            page.get_by_role("option", name="Compare all methods").click()
            page.wait_for_function(shown, arg=len(demo.m2ib_setting_groups))  # every method's settings
            page.click("#m2ib-method input")
            page.get_by_role("option", name="M2IB", exact=True).click()
            page.wait_for_function(shown, arg=1)
            page.click("#m2ib-settings button")
            page.click("#m2ib-run")  # nothing uploaded yet: a message, not a crash
            page.get_by_text("no image: upload one").first.wait_for()
            page.locator("#m2ib-examples").get_by_text(SCENES[1]["caption"]).click()  # one click: image and text
            page.wait_for_function(f"document.querySelector('#m2ib-text textarea').value === {SCENES[1]['caption']!r}")
            page.wait_for_selector("#m2ib-image img")
            page.set_input_files("#m2ib-image input[type=file]", str(SCENE1))
            page.fill("#m2ib-text textarea", CAPTION1)
            page.click("#m2ib-run")  # the default settings: what a user gets
            page.wait_for_selector("#m2ib-heatmap img", timeout=90_000)
            page.wait_for_selector("#m2ib-figure img", timeout=90_000)
            page.wait_for_function("document.querySelector('#m2ib-heatmap img').naturalWidth > 0")
            size = page.eval_on_selector("#m2ib-heatmap img", "e => [e.naturalHeight, e.naturalWidth]")
            assert tuple(size) == tuple(backend.geometry.image_size)
            shown = page.eval_on_selector_all(
                "#m2ib-tokens .m2ib-tok:not(.m2ib-special) .m2ib-word", "es => es.map(e => e.textContent)"
            )
            assert shown == words
            assert float(page.input_value("#m2ib-similarity textarea, #m2ib-similarity input")) > 0
            page.locator("#m2ib-files").get_by_text(".npz", exact=True).wait_for()  # the downloads
            assert "⚠" not in page.inner_text("#m2ib-status")  # the default settings warn of nothing
            for toast in page.locator(".toast-close").all():  # close the earlier message for the picture
                toast.click()
            page.wait_for_timeout(500)
            shot = tmp_path / "viewer.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as im:
        assert im.size[0] == 1280
    if os.environ.get("M2IB_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copyfile(shot, ROOT / "docs" / "viewer.png")
    assert outside == []  # offline and private: the page asks nothing of other hosts
