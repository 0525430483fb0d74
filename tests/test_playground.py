"""The playground page at `/`, in a real headless browser (Debian's chromium, driven by selenium).

Loads the page from a real `tinystories serve`, submits a prompt, waits for streamed text, opens a
token's alternatives, and saves a screenshot (pytest's tmp dir; TINYSTORIES_SCREENSHOT=PATH also
writes one there, which is how docs/images/playground.png is made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from test_serve import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# CI (.ci/run, CI=true) installs chromium, so there a missing browser is a failure, never a silent skip.
_HAVE_BROWSER = Path(CHROMIUM).exists() and Path(DRIVER).exists()
pytestmark = pytest.mark.skipif(not _HAVE_BROWSER and os.environ.get("CI") != "true",
                                reason="needs Debian's chromium and chromium-driver "
                                       "(apt-get install -y chromium chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_playground_streams_a_story_and_shows_alternatives(tiny_model, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    # the README's shot: TINYSTORIES_PLAYGROUND_MODEL=shipped (the model in the box)
    shipped = os.environ.get("TINYSTORIES_PLAYGROUND_MODEL") == "shipped"
    if shipped:
        from tinystories.model.shipped import shipped_model_dir
    name = "tinystories-shipped" if shipped else "tiny"
    srv = Server(shipped_model_dir() if shipped else tiny_model, "--threads", 1, name=name)
    try:
        browser.get(srv.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(EC.text_to_be_present_in_element((By.ID, "model"), name))
        # nothing on the page comes from elsewhere
        sources = browser.execute_script(
            "return [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)")
        assert all(s.startswith(srv.url) for s in sources), sources

        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Once upon a time, there was a little dog named Max. He")
        browser.execute_script("document.getElementById('seed').value = '3'")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#story .tok")) >= 5)  # streamed tokens
        wait.until(lambda d: d.find_element(By.ID, "go").is_enabled())                   # and the end
        status = browser.find_element(By.ID, "status").text
        assert re.search(r"\d+ tokens in [\d.]+ s · [\d.]+ tokens/s", status), status
        tokens = browser.find_elements(By.CSS_SELECTOR, "#story .tok")
        story = browser.find_element(By.ID, "story").text
        assert story.startswith("Once upon a time") and len(story) > len("Once upon a time, there was a little dog")

        tokens[min(3, len(tokens) - 1)].click()
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alt-table tr"))
        assert 1 <= len(rows) <= 6  # the top 5, and the sampled token when it is not among them
        probs = [float(r.find_element(By.CSS_SELECTOR, "td.p").text.rstrip("%")) for r in rows]
        assert probs[:5] == sorted(probs[:5], reverse=True) and 0 < sum(probs) <= 100.05
        assert len(browser.find_elements(By.CSS_SELECTOR, "#alt-table tr.chosen")) == 1  # the token it wrote

        shot = tmp_path / "playground.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("TINYSTORIES_SCREENSHOT"):
            shutil.copy(shot, os.environ["TINYSTORIES_SCREENSHOT"])

        # the length slider at its maximum: prompt + length pass the context, and the page asks for what is left
        browser.execute_script("const s = document.getElementById('max_tokens'); s.value = s.max;")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.ID, "go").is_enabled())  # disabled from the click to the end
        status = browser.find_element(By.ID, "status").text
        assert "tokens in" in status and "error" not in status, status
    finally:
        code, err = srv.stop()
    assert code == 0 and "Traceback" not in err, err
