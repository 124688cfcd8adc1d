"""The documentation site as a reader gets it: the built site (``mkdocs build``, which .ci/run runs
after the test suite) served over HTTP and opened in Debian's chromium through playwright, like the
viewer's browser test. The quickstart tutorial's figures, made at build time, must load, and the
page must ask nothing of other hosts (the site reads offline). Skipped, with the reason, where
chromium or the built site is missing."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
#: Pages whose figures are drawn while the site builds (the executed tutorials).
FIGURE_PAGES = ["tutorials/quickstart/", "tutorials/compare/", "tutorials/evaluate/", "tutorials/audit/",
                "tutorials/interactions/", "tutorials/families/"]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium); CI installs it"),
    pytest.mark.skipif(
        not (SITE / "tutorials" / "quickstart" / "index.html").exists(),
        reason="no built site: pip install -e '.[docs]' && mkdocs build (.ci/run builds it, then runs this test)",
    ),
]


@pytest.fixture(scope="module")
def site_url():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _loaded_figures(page) -> list[list[int]]:
    """[naturalWidth, naturalHeight] of every PNG the notebook cells output (inline data)."""
    return page.eval_on_selector_all(
        "img[src^='data:image/png']", "es => es.map(e => [e.naturalWidth, e.naturalHeight])"
    )


def test_quickstart_in_a_browser(site_url, tmp_path):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    shot = tmp_path / "docs_quickstart.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on(
                "request",
                lambda r: None if r.url.startswith((site_url, "data:", "blob:")) else outside.append(r.url),
            )
            page.goto(site_url + "tutorials/quickstart/")
            page.wait_for_load_state("networkidle")
            assert "Quickstart" in page.title()
            figures = _loaded_figures(page)
            assert figures and all(w > 100 and h > 100 for w, h in figures), figures  # decoded, not broken
            assert "exp.save" in page.inner_text("body")  # the code is shown with its output
            page.screenshot(path=str(shot), full_page=False)
            for path in FIGURE_PAGES[1:]:  # every executed tutorial shows a figure made at build time
                page.goto(site_url + path)
                page.wait_for_load_state("networkidle")
                assert [f for f in _loaded_figures(page) if f[0] > 100], path
            page.goto(site_url)  # the home page links every tutorial
            for path in FIGURE_PAGES:
                assert page.locator(f"a[href$='{path}']").count() >= 1, path
        finally:
            browser.close()
    if os.environ.get("M2IB_UPDATE_SCREENSHOT"):  # refresh the picture in docs/
        shutil.copyfile(shot, ROOT / "docs" / "screenshots" / "quickstart.png")
    assert outside == []  # offline: the site asks nothing of other hosts
