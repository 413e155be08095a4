"""The web page of ``shitu serve`` in a real browser: headless Chromium driven by Selenium against a real
``shitu serve`` process on 127.0.0.1, with the demo gallery's real photos and the shipped model.

Screenshots land in the test's tmp folder (``query.png``, ``added.png``, ``gallery.png``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
    pytest.skip(f"headless Chromium not found ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver",
                allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")
pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'shitu[serve]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "browser-token"
QUERY = REPO / "gallery" / "queries" / "Arla-Ecological-Medium-Fat-Milk__1.jpg"
NEWCOMER = REPO / "tests" / "synthetic" / "demo" / "Sunny Cola"  # a product the demo gallery lacks
WAIT = 60  # seconds: the shared cores can be slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``shitu serve`` on an index of a copy of the demo gallery; yields its URL and index folder."""
    root = tmp_path_factory.mktemp("browser")
    gallery, index = root / "gallery", root / "index"
    shutil.copytree(REPO / "gallery" / "demo", gallery)
    run = [sys.executable, "-m", "shitu"]
    subprocess.run([*run, "build-index", gallery, "--index", index, "-q"], cwd=REPO, check=True, timeout=600)
    port = free_port()
    log = open(root / "serve.log", "w")
    process = subprocess.Popen([*run, "serve", "--index", index, "--port", str(port), "--token", TOKEN], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, root / "serve.log")
        yield url, index
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_until_up(url: str, process, log: Path):
    deadline = time.monotonic() + WAIT * 2
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"shitu serve exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=5):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"shitu serve did not answer within {WAIT * 2} s: {log.read_text()}")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message=f"waited for {what}")


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def verdict(driver) -> str:
    return driver.find_element(By.ID, "verdict").get_attribute("class")


def recognise(driver, path: Path):
    """Choose a photo in the page and wait for its answer; returns the label the page shows."""
    before = text(driver, "matches")
    driver.find_element(By.ID, "query-file").send_keys(str(path))
    wait(driver, lambda d: ("known" in verdict(d).split() or "unknown" in verdict(d).split())
         and text(d, "matches") != before, f"the answer for {path.name}")
    return text(driver, "top-label")


def give_token(driver):
    wait(driver, lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None, "the token dialog")
    driver.find_element(By.ID, "token-input").send_keys(TOKEN)
    driver.find_element(By.ID, "token-ok").click()


def slide(driver, value: float):
    """Move the threshold slider as a person would: a new value, then the input event."""
    driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0]; "
                          "s.dispatchEvent(new Event('input'));", value)


def labels_shown(driver) -> list[str]:
    """The label list as drawn now (read in one script: the page redraws it after every change)."""
    return driver.execute_script("return [...document.querySelectorAll('#label-list button > span:first-child')]"
                                 ".map((span) => span.textContent);")


def test_recognise_add_and_remove_in_the_page(server, browser, tmp_path):
    url, index = server
    browser.get(url)
    wait(browser, lambda d: "30 photos of 10 labels" in text(d, "summary"), "the index summary")

    # upload a photo and read the top label from the page
    assert recognise(browser, QUERY) == "Arla-Ecological-Medium-Fat-Milk"
    wait(browser, lambda d: all(img.get_attribute("naturalWidth") not in (None, "0")
                                for img in d.find_elements(By.CSS_SELECTOR, "#matches img")), "the thumbnails")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matches li")) == 5

    # the threshold slider dims the matches below it, and can make the same answer "unknown", without
    # asking the server again
    scores = [float(score.text.split()[1]) for score in browser.find_elements(By.CSS_SELECTOR, "#matches .score")]
    assert scores[0] >= 0.9 > scores[-1]  # the right answer is sure, the last match is not
    slide(browser, 0.9)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matches li.below")) == sum(s < 0.9 for s in scores)
    assert text(browser, "top-label") == "Arla-Ecological-Medium-Fat-Milk" and text(browser, "threshold-value") == "0.900"
    browser.save_screenshot(str(tmp_path / "query.png"))
    slide(browser, 1)
    assert text(browser, "top-label") == "unknown" and "unknown" in verdict(browser).split()
    slide(browser, 0)

    # add a photo under a new label (the token is asked once) and see it answered
    newcomer = NEWCOMER / "01_catalogue.jpg"
    assert recognise(browser, newcomer) != "Sunny Cola"
    browser.find_element(By.ID, "add-query-label").send_keys("Sunny Cola")
    browser.find_element(By.ID, "add-query-button").click()
    give_token(browser)
    wait(browser, lambda d: text(d, "top-label") == "Sunny Cola", "the answer after the add")
    assert "31 photos of 11 labels" in text(browser, "summary")
    browser.save_screenshot(str(tmp_path / "added.png"))

    # browse it in the gallery and remove its photo: the label is gone, and so is the answer
    browser.find_element(By.ID, "tab-gallery").click()
    assert "Sunny Cola" in labels_shown(browser)
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "#label-list button") if b.text.startswith("Sunny Cola")).click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#photo-grid figure")) == 1, "the label's photo")
    browser.find_element(By.CSS_SELECTOR, "#photo-grid figure button").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: "Sunny Cola" not in labels_shown(d), "the label list without Sunny Cola")
    wait(browser, lambda d: text(d, "top-label") not in ("Sunny Cola", "Recognising…"), "the answer after removing")

    # a new label with two photos from the gallery tab, then the whole label removed (no second token prompt)
    browser.find_element(By.ID, "new-label-name").send_keys("Cola Twins")
    files = "\n".join(str(NEWCOMER / name) for name in ("02_rotated.jpg", "03_lighting.jpg"))
    browser.find_element(By.ID, "new-label-files").send_keys(files)
    browser.find_element(By.ID, "new-label-button").click()
    wait(browser, lambda d: text(d, "label-title") == "Cola Twins"
         and len(d.find_elements(By.CSS_SELECTOR, "#photo-grid figure")) == 2, "the new label's photos")
    browser.save_screenshot(str(tmp_path / "gallery.png"))
    browser.find_element(By.ID, "remove-label").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: "Cola Twins" not in labels_shown(d) and text(d, "label-title") == "Choose a label",
         "the label list without Cola Twins")
    assert "30 photos of 10 labels" in text(browser, "summary")
    assert browser.find_element(By.ID, "token-dialog").get_attribute("open") is None

    check = subprocess.run([sys.executable, "-m", "shitu", "check", "--index", index], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert len(severe) == 1 and "/v1/images" in severe[0] and "401" in severe[0]  # the first write, before the token
