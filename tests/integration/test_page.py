"""The page at GET / in a real headless Chromium: type Korean sentences, click, read label and probability.

Needs the Debian ``chromium`` package (/usr/bin/chromium) and Playwright for Python (``pip install
playwright``; its own browser download, ``playwright install``, is never used). The screenshot lands in
``artifacts/serve_page.png`` (gitignored); the test prints its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("KOSENT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SENTENCES = ["이 영화 정말 재미있어요 강력 추천합니다", "시간 낭비였다 다시는 안 본다"]


@pytest.fixture(scope="module")
def browser():
    # CI installs both (.ci/run, pyproject's dev extra): there a missing browser is a failure, not a skip.
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} not found: install the Debian package (apt-get install -y chromium) to run the page test")
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]' to run the page test")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_url(ray_cluster, serve_checkpoints, browser, free_port):
    from ray import serve

    from kosent.serve import app_builder

    port = free_port(int(os.environ.get("KOSENT_TEST_PAGE_PORT", "8124")))
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    serve.run(app_builder({"manifest": str(serve_checkpoints["a"]), "models": {"b": str(serve_checkpoints["b"])},
                           "num_cpus": 0.5, "max_replicas": 1}), name="page", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.timeout(900)
def test_page_click_shows_label_and_probability(page_url, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 720}, locale="ko-KR")
    outside: list[str] = []

    def guard(route) -> None:  # loopback only: anything else is recorded and refused
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    try:
        page.goto(page_url + "/", wait_until="load")
        assert "감성" in page.title()
        page.fill("#texts", "\n".join(SENTENCES))
        page.click("#predict")  # a real mouse click on the button
        rows = page.locator("#results tbody tr.result")
        rows.nth(len(SENTENCES) - 1).wait_for(timeout=30_000)
        shown = [
            (rows.nth(i).locator("td").nth(0).inner_text(), rows.nth(i).locator("td.label").inner_text(),
             rows.nth(i).locator("td.prob .value").inner_text())
            for i in range(rows.count())
        ]
        status = page.inner_text("#status")

        expected = requests.post(page_url + "/predict", json={"texts": SENTENCES}, timeout=30).json()
        assert [s[0] for s in shown] == SENTENCES
        for (_, label, prob), p in zip(shown, expected["predictions"], strict=True):
            assert label == p["label"]
            assert prob.startswith(f"{p['probability']:.4f}")
        assert status.startswith(f"{len(SENTENCES)}개 문장")
        assert page.inner_text("#model-name") == "default"

        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / "serve_page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"page screenshot: {shot}")
        assert shot.stat().st_size > 5_000

        # The second model from the drop-down answers the same click.
        page.select_option("#model", "b")
        page.click("#predict")
        page.wait_for_function("document.getElementById('model-name').textContent === 'b'", timeout=30_000)
        # An empty box is refused in the page, without a request.
        page.fill("#texts", "   ")
        page.click("#predict")
        assert "입력" in page.inner_text("#status")
        assert not outside, f"the page tried to reach outside 127.0.0.1: {outside}"
    finally:
        page.close()
