"""The built book in a real browser: the ε and b sliders swap the figure, offline.

Debian's chromium, headless, driven by Selenium through Debian's chromedriver (never a
downloaded driver), loads each chapter that has an explorer from a server on 127.0.0.1, moves
each slider with the keyboard, checks that the figure shown changed, and checks that no
request left localhost. chromium and chromium-driver are installed with apt-get when missing
and the tests run as root.

The pages are the smoke build's, unless ``DPBR_BOOK_HTML`` names a built site (for instance
``book/_build/html`` after ``make book``), which is then checked instead::

    DPBR_BOOK_HTML=book/_build/html .venv/bin/python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_book import build_smoke_book

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--window-size=1280,2000",
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
#: The chapters whose explorers (``dpbr_lib.widgets.grid_explorer``) the test drives.
EXPLORER_PAGES = ("theory_bounds", "cnn_experiments", "sparsification")
SITE_VARIABLE = "DPBR_BOOK_HTML"

# The image each explorer shows now, as pixels (canvas data URL), and how many are visible.
VISIBLE_IMAGES = """
return Array.from(document.querySelectorAll('.widget-image'))
  .filter(img => img.offsetParent !== null && img.complete && img.naturalWidth > 0)
  .map(img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    canvas.getContext('2d').drawImage(img, 0, 0);
    return canvas.toDataURL('image/png');
  });
"""


@pytest.fixture(scope="session")
def chromium() -> tuple[Path, Path]:
    """Debian's chromium and chromedriver, installed with apt-get if missing (as root)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium/chromium-driver missing and apt-get unavailable (needs root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            check=True, env=env, capture_output=True,
        )
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The built HTML (``DPBR_BOOK_HTML``, else the smoke build) on 127.0.0.1, a free port."""
    if os.environ.get(SITE_VARIABLE):
        html = Path(os.environ[SITE_VARIABLE]).resolve()
        if not (html / "index.html").is_file():
            pytest.fail(f"{SITE_VARIABLE}={html} holds no built site (no index.html)")
    else:
        html = build_smoke_book(tmp_path_factory) / "_build" / "html"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(html))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    session = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requested_urls(browser) -> set[str]:
    """Every URL the page asked for: CDP network events plus the resource timing entries."""
    urls = set(browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    ))
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            params = message["params"]
            urls.add(params["request"]["url"] if "request" in params else params["url"])
    return urls


@pytest.mark.parametrize("page", EXPLORER_PAGES)
def test_sliders_swap_the_figure_offline(site, browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{site}/_executed/{page}.html")
    wait = WebDriverWait(browser, 30)
    handles = wait.until(
        lambda b: (found := b.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle"))
        and len(found) >= 2 and found
    )
    shown = wait.until(lambda b: (images := b.execute_script(VISIBLE_IMAGES)) and images)
    assert len(shown) == 1, "exactly one image of the explorer's grid is visible"

    def changed_from(before):
        return lambda b: (now := b.execute_script(VISIBLE_IMAGES)) and now != before and now

    # A slider over a single value (a smoke grid's one batch size) has nowhere to move.
    movable = [h for h in handles
               if float(h.get_attribute("aria-valuemax")) > float(h.get_attribute("aria-valuemin"))]
    assert movable, "no slider has more than one position"
    for handle in movable:
        before = browser.execute_script(VISIBLE_IMAGES)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)
        after = wait.until(changed_from(before))
        assert len(after) == 1 and after != before

    urls = _requested_urls(browser)
    assert any(url.endswith(".js") and "jupyter-widgets/embed-amd.js" in url
               for url in (u.split("?")[0] for u in urls)), "widget JavaScript not seen"
    remote = sorted(
        url for url in urls
        if urlsplit(url).scheme in ("http", "https", "ws", "wss")
        and urlsplit(url).hostname not in LOCAL_HOSTS
    )
    assert not remote, f"requests left localhost: {remote}"
