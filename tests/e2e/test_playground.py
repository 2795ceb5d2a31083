"""The playground page at ``/`` in a real headless Chromium, against the real deployment.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``.ci/run``
installs them) are driven by selenium through the system chromedriver: selenium never downloads a
driver or a browser. Without them (or without selenium) the browser tests skip and say why.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support import ALICE, Deployment, make_png

CHROMIUM = Path(os.environ.get("BDIA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BDIA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
STEPS = 6
WAIT_S = 45.0
SOURCE_PROMPT = "a gradient"
EDIT_PROMPT = "a red square"


def _why_no_browser() -> str:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"no {path}: apt-get install {package} (.ci/run does) to run the playground in a browser"
    return ""


NO_BROWSER = _why_no_browser()
needs_browser = pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)


def test_the_page_is_open_not_an_api_operation_and_locked_down(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "img-src 'self' blob: data:" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/playground/playground.js"' in page.text and "<script>" not in page.text  # no inline script
    for name, media_type in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = http.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert asset.headers["content-security-policy"] == csp
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing from elsewhere
    assert http.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert http.get("/playground/../main.py").status_code == 404
    assert http.get("/playground/missing.js").headers["content-type"] == "application/problem+json"
    paths = http.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/playground") for path in paths)


# ------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through the system chromedriver (never selenium-manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def visible(driver: Any, element_id: str) -> bool:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return !!e && e.getClientRects().length > 0", element_id
    )


def problem_text(driver: Any) -> str:
    return driver.execute_script("const p = document.getElementById('problem'); return p.hidden ? '' : p.innerText")


def image_pixels(driver: Any, element_id: str) -> np.ndarray:
    """What an <img> of the page shows, read back through a canvas (its blob: URL is same-origin)."""
    url = driver.execute_script(
        """const img = document.getElementById(arguments[0]);
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        canvas.getContext('2d').drawImage(img, 0, 0);
        return canvas.toDataURL('image/png');""",
        element_id,
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def followed(driver: Any, box: str) -> str:
    """How the page followed a job: ``eventsource``, ``stream`` (fetch, with the key) or ``polling``."""
    return driver.execute_script("return document.getElementById(arguments[0]).dataset.via", box)


def severe_console_messages(driver: Any) -> list[str]:
    """Console errors (a CSP violation, a failed script) other than the API's deliberate 401s."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "401 (Unauthorized)" not in entry["message"]
    ]


def load_image(driver: Any, path: Path, working_size: tuple[int, int]) -> None:
    driver.find_element("id", "image").send_keys(str(path))
    wait_for(lambda: visible(driver, "stage-box"), "the image preview")
    size = driver.execute_script("const c = document.getElementById('preview'); return [c.width, c.height]")
    assert tuple(size) == working_size  # shown at the size the worker edits it at
    assert "Working size" in driver.find_element("id", "size-note").text


def fill_prompts(driver: Any) -> None:
    driver.find_element("id", "source-prompt").send_keys(SOURCE_PROMPT)
    driver.find_element("id", "edit-prompt").send_keys(EDIT_PROMPT)
    driver.find_element("css selector", "details.params summary").click()
    steps = driver.find_element("id", "steps")
    steps.clear()
    steps.send_keys(str(STEPS))


def wait_for_image(driver: Any, element_id: str) -> str:
    """The id of the job whose result the <img> shows, once it has loaded."""
    script = """const img = document.getElementById(arguments[0]);
        return img.dataset.job && img.complete && img.naturalWidth > 0 ? img.dataset.job : null;"""

    def shown() -> str | None:
        reported = problem_text(driver)
        assert not reported, f"the page reports a problem: {reported}"
        return driver.execute_script(script, element_id)

    return wait_for(shown, f"#{element_id} to show a result")


@needs_browser
def test_edit_with_a_mask_then_reconstruct(
    browser: Any, deployment: Deployment, http: httpx.Client, tmp_path: Path, tiny_model: Any
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    from bdia import imaging

    upload_size = (64, 48)  # not the model's shape: the page previews the working size the worker uses
    size = imaging.working_size(tiny_model, upload_size)
    upload = tmp_path / "upload.png"
    upload.write_bytes(make_png(5, upload_size))

    browser.get(f"{deployment.url}/")
    wait_for(lambda: browser.execute_script("return document.getElementById('model').options.length"), "the models")
    assert visible(browser, "auth") is False  # this deployment is open: no key asked for
    unlabelled = browser.execute_script(
        """return [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)"""
    )
    assert unlabelled == []
    load_image(browser, upload, size)
    fill_prompts(browser)

    browser.find_element("id", "mask-on").click()  # paint a stroke down the left: white = may change
    browser.execute_script("document.getElementById('brush').value = 40")  # radius: 40 % of the image
    layer = browser.find_element("id", "mask-layer")
    width, height = layer.size["width"], layer.size["height"]
    stroke = ActionChains(browser).move_to_element_with_offset(layer, -width // 4, -height // 3).click_and_hold()
    stroke.move_by_offset(0, 2 * height // 3).release().perform()
    browser.find_element("id", "submit").click()

    job_id = wait_for_image(browser, "out-edit")
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["kind"] == "edit"
    assert job["params"]["prompt"] == EDIT_PROMPT and job["params"]["masked"] is True
    shown = image_pixels(browser, "out-edit")
    served = np.asarray(Image.open(io.BytesIO(http.get(f"/v1/jobs/{job_id}/result").content)).convert("RGB"))
    assert shown.shape == (upload_size[1], upload_size[0], 3)  # the upload's own size comes back
    assert np.array_equal(shown, served) and shown.std() > 0  # the very result, not a blank image
    assert browser.find_element("id", "download").get_attribute("href").startswith("blob:")
    assert job_id in browser.find_element("id", "edit-facts").text
    mask = browser.execute_script(
        """const c = document.getElementById('out-mask');
        const row = c.getContext('2d').getImageData(0, 0, c.width, 1).data;
        return [row[0], row[4 * (c.width - 1)]]"""
    )
    assert mask == [255, 0]  # the mask as the model sees it: left may change, right is kept

    browser.find_element("id", "reconstruct").click()
    recon_id = wait_for_image(browser, "out-recon")
    wait_for(lambda: visible(browser, "roundtrip"), "the round-trip report")
    assert followed(browser, "edit-progress") == followed(browser, "recon-progress") == "eventsource"  # no key
    result = http.get(f"/v1/jobs/{recon_id}").json()["result"]
    assert result["exact"] is True and result["latent_max_abs_error"] == 0  # the defaults are bit-exact
    report = browser.find_element("id", "recon-facts").text
    assert "Latent max |error|\n0" in report and "yes: bit for bit" in report and "PSNR" in report

    browser.set_window_size(380, 900)  # a phone's width: nothing sticks out sideways
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert severe_console_messages(browser) == []


@needs_browser
def test_with_auth_the_page_asks_for_a_key_and_streams_with_it(
    browser: Any, production: Deployment, tmp_path: Path
) -> None:
    with httpx.Client(base_url=production.url, timeout=30) as open_client:
        assert open_client.get("/").status_code == 200  # the page itself is open
        assert open_client.get("/v1/models").status_code == 401
    upload = tmp_path / "upload.png"
    upload.write_bytes(make_png(6, (40, 40)))

    browser.set_window_size(1280, 1100)
    browser.get(f"{production.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(lambda: visible(browser, "auth"), "the API key form")
    assert "unauthorized" in problem_text(browser)
    browser.find_element("id", "api-key").send_keys(ALICE)
    browser.find_element("css selector", "#key-form button[type=submit]").click()
    wait_for(lambda: browser.execute_script("return document.getElementById('model').options.length"), "the models")
    assert browser.execute_script("return sessionStorage.getItem('bdia.apiKey')") == ALICE
    load_image(browser, upload, (32, 32))
    fill_prompts(browser)
    browser.find_element("id", "submit").click()
    job_id = wait_for_image(browser, "out-edit")
    assert followed(browser, "edit-progress") == "stream"  # read by fetch, with the key: EventSource cannot send it
    with httpx.Client(base_url=production.url, timeout=30, headers={"Authorization": f"Bearer {ALICE}"}) as client:
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    assert severe_console_messages(browser) == []
