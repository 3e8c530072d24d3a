"""The MLflow UI and report.html in headless Chromium (make test-browser).

Needs Debian's chromium and chromium-driver (`make test-browser` installs them with apt) and
selenium (the ``browser`` extra). No browser is downloaded at run time. Screenshots go to
``$MEDFLOW_BROWSER_SHOTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from medflow.cli.review import ui_command
from medflow.tracking.runs import ui_url
from mlflow import MlflowClient
from tests.helpers import make_msd, read_splits, run_evaluation
from tests.pipelines.tasks.evaluation.test_segmentation import EXTRA

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps calling out to Google's hosts, which this closed network refuses.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[browser]' (make test-browser)")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("apt-get install chromium chromium-driver (make test-browser does it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ui(tmp_path):
    """A tiny tracked segmentation run and `medflow ui`'s server over its store on 127.0.0.1."""
    store, cfg, ev = run_evaluation(tmp_path, make_msd(tmp_path / "msd", n=6), EXTRA, ["split.test_fraction=0.34"])
    port = _free_port()
    cmd, env = ui_command(store, port)
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow ui did not start: {(tmp_path / 'ui.log').read_text()[-2000:]}")
        yield base, MlflowClient(store), ev, read_splits(tmp_path)["test"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait(driver, check, timeout=60.0, what="page"):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = check()
            if value:
                return value
        except Exception:  # the page is still rendering: elements come and go
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_ui_opens_on_runs_and_the_report_renders(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    shots = Path(os.environ.get("MEDFLOW_BROWSER_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    base, client, ev, test_ids = ui
    run = client.get_run(ev.run_id)
    parent_id, exp_id = run.data.tags["mlflow.parentRunId"], run.info.experiment_id
    label = client.get_run(parent_id).info.run_name

    # The experiment link medflow prints opens on the runs table with the pipeline run in it.
    browser.get(ui_url(base, exp_id))
    body = _wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").text if label in
                 browser.find_element(By.TAG_NAME, "body").text else None, what="the runs table")
    browser.save_screenshot(str(shots / "1-experiment-runs.png"))
    assert "Run Name" in body and "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    assert "Token Usage" not in body  # not the GenAI overview

    # The parent run's report.html, in MLflow's artifact viewer (an iframe of the artifact).
    browser.get(ui_url(base, exp_id, parent_id).replace("?", "/artifacts/report.html?"))
    frame = _wait(browser, lambda: browser.find_element(By.TAG_NAME, "iframe"), what="the artifact viewer")
    browser.switch_to.frame(frame)
    img = _wait(browser, lambda: browser.find_element(By.ID, "confusion"), what="the report's confusion matrix")
    _wait(browser, lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;",
                                                  img), what="the confusion matrix image to load")
    width = browser.execute_script("return arguments[0].naturalWidth;", img)
    assert width > 300
    table = browser.find_element(By.ID, "per-case")

    def column(name):
        heads = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
        i = heads.index(name)
        return [r.find_elements(By.TAG_NAME, "td")[i].get_attribute("data-v")
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    assert sorted(column("case_id")) == sorted(test_ids)  # and it sorts on a click, inside MLflow's viewer
    header = next(h for h in table.find_elements(By.CSS_SELECTOR, "thead th") if h.text == "mean_dice")
    header.click()
    up = [float(v) for v in column("mean_dice")]
    header.click()
    down = [float(v) for v in column("mean_dice")]
    assert "desc" in header.get_attribute("class")
    browser.execute_script("arguments[0].scrollIntoView();", table)
    browser.switch_to.default_content()
    browser.save_screenshot(str(shots / "2-run-report-in-mlflow.png"))
    assert up == sorted(up) and down == sorted(up, reverse=True)
    assert all((shots / n).stat().st_size > 0 for n in ("1-experiment-runs.png", "2-run-report-in-mlflow.png"))
