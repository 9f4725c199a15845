"""The browser playground at /playground: static files with the right types, open without the key while the API
keeps needing it, examples that do what they claim, and in headless Chromium a streamed correction of the demo
Aligner with its insertions and deletions highlighted, and server errors shown as readable messages.

The browser test needs Selenium (the ``dev`` extra) and Debian's ``chromium`` and ``chromium-driver``
(``apt-get install chromium chromium-driver``); without them it skips, saying which is missing. It saves a
screenshot; ``UPDATE_SCREENSHOTS=1`` writes it to ``docs/playground.png``, the one the README shows.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import httpx
from starlette.testclient import TestClient

from aligner_chains import Aligner
from aligner_chains.server import ServerThread, create_app
from aligner_chains.server.playground import PLAYGROUND_ROUTES, load_examples
from aligner_chains.server.testing import SlowBackend

KEY = "playground-test-key"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "playground.png"
TYPES = {
    "/playground": "text/html; charset=utf-8",
    "/playground/playground.js": "text/javascript; charset=utf-8",
    "/playground/playground.css": "text/css; charset=utf-8",
    "/playground/settings.json": "application/json",
}


@pytest.fixture(scope="module")
def demo() -> Aligner:
    return Aligner.from_pretrained("demo")


def _example(label_start: str) -> dict[str, str]:
    return next(e for e in load_examples() if e["label"].startswith(label_start))


# ----------------------------------------------------------------------------- served files, key, opt-out


def test_page_and_assets_are_served_without_the_key_the_api_still_needs_it(tiny_aligner: Aligner) -> None:
    client = TestClient(create_app(tiny_aligner, api_key=KEY, max_tokens_limit=32, served_model_name="tiny"))
    assert set(TYPES) <= PLAYGROUND_ROUTES
    bodies = {}
    for path, content_type in TYPES.items():
        response = client.get(path)  # no Authorization header
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == content_type
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert KEY not in response.text
        bodies[path] = response.text
    page = bodies["/playground"]
    assert 'src="playground/playground.js"' in page and 'href="playground/playground.css"' in page
    for path, text in bodies.items():  # offline: nothing loaded from another site
        assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}", text), path
    settings = client.get("/playground/settings.json").json()
    assert settings == {"model": "tiny", "api_key_required": True, "max_tokens_limit": 32, "examples": load_examples()}
    script = bodies["/playground/playground.js"]
    assert 'fetch("v1/corrections", ' in script  # relative: the page works behind a path prefix too
    assert "localStorage" not in script and "sessionStorage" not in script and "cookie" not in script  # key: tab only
    # only the listed files: nothing else of the package is reachable
    for name in ("index.html", "examples.json", "__init__.py", "..%2F__init__.py", "%2e%2e/config.py"):
        missing = client.get(f"/playground/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    redirect = client.get("/playground/", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "../playground"
    # the API the page calls still needs the key
    body = {"question": "Q?", "answer": "A.", "stream": True, "include_diff": True}
    assert client.post("/v1/corrections", json=body).status_code == 401
    ok = client.post("/v1/corrections", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")
    metrics = client.get("/metrics").text
    assert 'route="/playground",status="200"' in metrics


def test_no_playground_leaves_it_out(tiny_aligner: Aligner, tiny_model_dir: Path) -> None:
    client = TestClient(create_app(tiny_aligner, playground=False))
    missing = client.get("/playground")
    assert missing.status_code == 404 and "/playground" not in missing.json()["error"]["message"].split("serves:")[1]
    assert client.get("/playground/playground.js").status_code == 404
    listed = TestClient(create_app(tiny_aligner)).get("/nowhere").json()["error"]["message"]
    assert "GET /playground" in listed
    from aligner_chains.cli import serve as server_cli

    parser = argparse.ArgumentParser()
    server_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", str(tiny_model_dir)])
    assert args.playground is True
    args = parser.parse_args(["serve", "--model", str(tiny_model_dir), "--no-playground"])
    assert args.playground is False
    assert TestClient(server_cli.build_app(args)).get("/playground").status_code == 404


def test_examples_do_what_they_claim_with_the_demo_aligner(demo: Aligner) -> None:
    examples = load_examples()
    assert {e["kind"] for e in examples} == {"clean", "redact", "refuse"}
    for example in examples:
        result = demo.correct(example["question"], example["answer"])
        assert result.corrected == example["correction"], example["label"]
        assert result.changed == (example["kind"] != "clean"), example["label"]
    redaction = demo.correct(_example("Contact")["question"], _example("Contact")["answer"]).diff()
    assert any("[EMAIL]" in e.corrected and "@" in e.original for e in redaction)


# ----------------------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs Selenium to drive a browser: pip install -e '.[dev]'")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({', '.join(missing)} not found): "
            "apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1030",
    ):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager (which would download drivers) is not used
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def _by_id(driver: Any, element_id: str) -> Any:
    return driver.find_element("id", element_id)


def _click_correct_and_wait(driver: Any) -> None:
    """Click Correct and wait until the page says it is done (after a result or an error)."""
    driver.execute_script("document.getElementById('status').textContent = ''")
    _by_id(driver, "correct").click()
    _wait(driver, lambda d: _by_id(d, "status").text.startswith("Done in"))


def _error(driver: Any) -> str:
    box = _by_id(driver, "error")
    return box.text if box.is_displayed() else ""


def _facts(driver: Any) -> dict[str, str]:
    items = driver.find_elements("css selector", "#facts > div")
    return {i.find_element("tag name", "dt").text: i.find_element("tag name", "dd").text for i in items}


def _set(driver: Any, element_id: str, value: str) -> None:
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)


def test_browser_streams_a_correction_and_highlights_what_changed(browser: Any, demo: Aligner, tmp_path: Path) -> None:
    app = create_app(demo, api_key=KEY, max_tokens_limit=256)
    contact, refusal = _example("Contact"), _example("Refusal")
    with ServerThread(app) as server:
        browser.get(server.url + "/playground")
        _wait(browser, lambda d: len(d.find_elements("css selector", "#examples button")) == len(load_examples()))
        assert _by_id(browser, "key-row").is_displayed()  # the server has a key: the page asks for it
        browser.find_element("xpath", "//div[@id='examples']/button[starts-with(., 'Contact')]").click()
        assert _by_id(browser, "answer").get_attribute("value") == contact["answer"]

        # errors from the server, as readable messages
        _click_correct_and_wait(browser)
        assert _error(browser).startswith("API key needed (HTTP 401): Missing or invalid API key")
        _by_id(browser, "api-key").send_keys("wrong")
        _click_correct_and_wait(browser)
        assert _error(browser).startswith("Wrong API key (HTTP 401)")
        _by_id(browser, "api-key").clear()
        _by_id(browser, "api-key").send_keys(KEY)
        browser.find_element("css selector", "details summary").click()
        _set(browser, "max-tokens", "100000")
        _click_correct_and_wait(browser)
        assert _error(browser) == (
            "Bad input (HTTP 400): max_new_tokens=100000 is more than this server's limit of 256 tokens; "
            "ask for at most 256."
        )
        _set(browser, "max-tokens", "")
        browser.find_element("css selector", "details summary").click()  # settings closed again
        _set(browser, "answer", "Call me. " * 1200)  # past the 2,048-token context
        _click_correct_and_wait(browser)
        assert _error(browser).startswith("Too long (HTTP 400): ") and "context" in _error(browser)
        _set(browser, "answer", contact["answer"])

        # the redaction, streamed: the address deleted, [EMAIL] inserted
        _click_correct_and_wait(browser)
        assert _error(browser) == ""
        assert _by_id(browser, "corrected-view").text == contact["correction"]
        inserted = [e.text for e in browser.find_elements("css selector", "#corrected-view ins")]
        deleted = [e.text for e in browser.find_elements("css selector", "#original-view del")]
        assert any("[EMAIL]" in s for s in inserted) and any("[PHONE]" in s for s in inserted), inserted
        assert any("mateo.petrov@westbrook.org" in s for s in deleted) and any("773-947-1180" in s for s in deleted)
        facts = _facts(browser)
        assert facts["finish reason"] == "stop" and facts["changed"] == "yes"
        assert int(facts["completion tokens"]) > 0 and facts["latency (server)"].endswith(" s")
        assert "first text after" in facts  # text arrived in delta events before the final one
        stats = {
            r.find_element("tag name", "th").text: r.find_element("tag name", "td").text
            for r in browser.find_elements("css selector", "#stats tbody tr")
        }
        assert stats and "decoder" in stats
        shot = tmp_path / "playground.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, SCREENSHOT)

        # the refusal, not streamed: the whole answer replaced
        browser.find_element("xpath", "//div[@id='examples']/button[starts-with(., 'Refusal')]").click()
        browser.find_element("css selector", "details summary").click()
        _by_id(browser, "stream").click()
        _click_correct_and_wait(browser)
        assert _by_id(browser, "corrected-view").text == refusal["correction"]
        assert browser.find_elements("css selector", "#corrected-view ins")
        assert "first text after" not in _facts(browser)
        # the key stayed in the page's memory: nothing stored
        assert browser.execute_script("return localStorage.length + sessionStorage.length") == 0
        assert browser.get_cookies() == []


def test_browser_shows_server_busy(browser: Any, demo: Aligner) -> None:
    slow = Aligner(SlowBackend(demo.backend, 1.5), demo.template, generation={"max_new_tokens": 4})
    with ServerThread(create_app(slow, max_in_flight=1)) as server:
        browser.get(server.url + "/playground")
        _wait(browser, lambda d: d.find_elements("css selector", "#examples button"))
        browser.find_element("xpath", "//div[@id='examples']/button[starts-with(., 'Clean')]").click()
        holder = threading.Thread(
            target=httpx.post,
            args=(server.url + "/v1/corrections",),
            kwargs={"json": {"question": "Q?", "answer": "A."}},
        )
        holder.start()  # holds the one slot for 1.5 s
        deadline = time.monotonic() + 10
        # in flight while /metrics answers: the holding request and this one
        while "aligner_server_http_requests_in_flight 2.0" not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline, "the holding request never started"
            time.sleep(0.02)
        _click_correct_and_wait(browser)
        holder.join()
    assert _error(browser).startswith("Server busy (HTTP 429): The server is busy") and "Retry after 1 s." in _error(
        browser
    )
