"""`verbo web` in headless Chromium: upload an image, see its caption, ask a question, save a screenshot.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and selenium (dev extra);
skipped with the reason when they are missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import running


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="the headless browser test needs Debian's chromium and chromium-driver "
           "(apt-get install -y chromium chromium-driver)",
)


@pytest.fixture()
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_caption_and_ask(model_dir, shapes_data, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    image = sorted((shapes_data / "images").glob("*.png"))[0]
    with running("web", model_dir, "--max-new-tokens", "8") as (_, url):
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("model: "))
        browser.find_element(By.ID, "file").send_keys(str(image))
        caption = browser.find_element(By.ID, "caption")
        wait.until(lambda d: caption.text and caption.text != "captioning...")
        assert browser.find_element(By.ID, "status").text == ""
        assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png")

        browser.find_element(By.ID, "question").send_keys("How many shapes are there?")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled()
                   and d.find_elements(By.CSS_SELECTOR, "#chat .assistant"))
        turns = browser.find_elements(By.CSS_SELECTOR, "#chat .turn")
        assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"]
        assert browser.find_element(By.ID, "status").text == ""
        screenshot = tmp_path / "verbo-web.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
        print(f"screenshot: {screenshot}")
