"""`idcmap serve` in a real browser (headless Chromium driven by Selenium): the viewer draws the
slide's tiles, the overlay toggles, a click shows the patch under it; /predict scores an upload."""

from __future__ import annotations

import shutil
import threading
import time

import pyarrow.parquet as pq
import pytest

from idcmap.jobs.serve.app import App, make_server

from .conftest import REPO

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium and chromedriver not found on PATH (apt-get install chromium chromium-driver; "
    ".ci/run installs them when missing)",
)

#: the canvas's pixels: how many are not white, and their sum (changes when the overlay does)
CANVAS = """const c = window.idcmapViewer.drawer.canvas;
const d = c.getContext('2d', {willReadFrequently: true}).getImageData(0, 0, c.width, c.height).data;
let inked = 0, sum = 0;
for (let i = 0; i < d.length; i += 4) {
  if (Math.min(d[i], d[i + 1], d[i + 2]) < 235) inked++;
  sum += d[i] + d[i + 1] + d[i + 2];
}
return [inked, d.length / 4, sum];"""


@pytest.fixture(scope="module")
def site(served_jobs):
    app = App(served_jobs)
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    app.tiles.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def test_the_viewer_draws_the_slide_toggles_the_overlay_and_shows_a_clicked_patch(site, browser, served_jobs):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/jobs/job/slides/patient-8916/patient-8916")
    wait_for(browser, "return document.body.dataset.tiles === 'drawn' && document.body.dataset.overlay === 'loaded'")
    wait_for(browser, "return window.idcmapViewer.world.getItemAt(0).getFullyLoaded()")
    inked, total, with_overlay = browser.execute_script(CANVAS)
    assert inked > 0.05 * total, "the canvas is blank"
    assert browser.execute_script("return document.querySelectorAll('#regions path').length") > 0
    browser.find_element(By.ID, "show-overlay").click()
    wait_for(browser, "return window.idcmapViewer.world.getItemAt(1).getOpacity() === 0")
    deadline = time.time() + 30  # the redraw lands on a later animation frame
    while (without := browser.execute_script(CANVAS)[2]) == with_overlay and time.time() < deadline:
        browser.execute_script("window.idcmapViewer.forceRedraw()")
        time.sleep(0.2)
    assert without != with_overlay, "toggling the overlay changed nothing on the canvas"
    browser.find_element(By.ID, "show-overlay").click()
    wait_for(browser, "return window.idcmapViewer.world.getItemAt(1).getOpacity() > 0")

    # a click on the scored patch nearest the middle (clear of the navigator) shows its row of the predictions file
    rows = pq.read_table(served_jobs[0] / "predictions" / "patient-8916" / "patient-8916.parquet").to_pylist()
    row = min(rows, key=lambda r: abs(r["x"] - 600) + abs(r["y"] - 850))
    x, y = browser.execute_script(
        "const p = window.idcmapViewer.viewport.pixelFromPoint(new OpenSeadragon.Point(arguments[0], arguments[1]));"
        "return [p.x, p.y];",
        (row["x"] + 25) / 1200,
        (row["y"] + 25) / 1200,
    )
    canvas = browser.find_element(By.CSS_SELECTOR, "#viewer .openseadragon-canvas")
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(
        canvas, x - size["width"] / 2, y - size["height"] / 2
    ).click().perform()
    wait_for(browser, "return document.getElementById('patch-info').textContent.startsWith('patch col')")
    text = browser.find_element(By.ID, "patch-info").text
    assert text.startswith(f"patch col {row['col']}, row {row['row']} (level-0 x {row['x']}, y {row['y']}): ")
    assert f"prob_idc {row['prob_idc']:.3f}, prob_patch {row['prob_patch']:.3f}" in text


def test_the_predict_page_scores_an_uploaded_patch(site, browser):
    from selenium.webdriver.common.by import By

    patch = sorted((REPO.parent / "shared" / "data" / "idc" / "patients").glob("*/1/*.png"))[:1]
    if not patch:
        pytest.skip("real data not available: ../shared/data/idc/patients is absent")
    browser.get(f"{site}/predict")
    browser.find_element(By.ID, "image").send_keys(str(patch[0]))
    browser.find_element(By.CSS_SELECTOR, "#predict-form button").click()
    wait_for(browser, "return document.getElementById('result').dataset.prob !== undefined")
    shown = browser.find_element(By.CSS_SELECTOR, "#result .prob").text
    answer = browser.execute_script(
        "const f = new FormData(document.getElementById('predict-form'));"
        "return fetch('/api/predict', {method: 'POST', body: f}).then(r => r.json());"
    )
    assert shown == f"{answer['prob_idc']:.3f}"
    assert browser.find_element(By.CSS_SELECTOR, "#result .call").text == answer["call"]
    assert browser.execute_script("return document.getElementById('preview').width") >= 50
