"""A newcomer's pages in a real browser: headless Chromium driven through its WebDriver.

Airflow (api-server, scheduler, dag-processor, started the way `make airflow` starts them)
and the retrieval service run on 127.0.0.1; Chromium logs into Airflow, finds the DAG
list, fills ebr_rollback's trigger form with the version `previous` and submits it, and
the run must succeed and move LATEST back; the service's /docs must render its operations
with nothing fetched from another host; the benchmark report must show its plots on the
first screen, beside the targets. Screenshots go to var/browser/ for a person to look at.

Selenium (pinned in requirements.lock) drives Debian's chromium through chromium-driver:
its waits and `send_keys` type into the React inputs of Airflow's UI the way a person
does, which raw DevTools-protocol calls would have to re-implement. `make test` installs
both packages when absent (`make chromium`); without them this module skips, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from config.loopback import free_port
from orchestration.local_airflow import LocalAirflow
from tests.airflow_support import NEWER, OLDER, store_with_two_story_indexes
from tests.polling import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "var" / "browser"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "headless Chromium is not installed: `make chromium` (apt-get install chromium chromium-driver) "
        "needs root and a package source",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """indexes/stories with two complete versions, LATEST on the newer: `previous` is the older."""
    return store_with_two_story_indexes(tmp_path_factory.mktemp("ebr"))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, store):
    """Started first and waited for last: it comes up while the report and /docs are checked."""
    processes = LocalAirflow(tmp_path_factory.mktemp("airflow-home"), free_port(), {"EBR_ROOT": store.uri})
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def service(store, airflow):
    port = free_port()
    env = {**os.environ, "EBR_ROOT": store.uri, "TF_USE_LEGACY_KERAS": "1"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ebr"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(answers, "ebr serve did not answer /healthz", 120, interval=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def shoot(browser, name: str) -> None:
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_the_report_shows_its_plots_on_the_first_screen_beside_the_targets(browser, tmp_path, airflow):
    from benchmarks import report

    out = report.write_report(REPO / "benchmarks" / "results.json", tmp_path / "report.html")
    browser.get(out.as_uri())
    plots = browser.find_elements(By.CSS_SELECTOR, ".plots figure img")
    assert len(plots) >= 3
    assert all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in plots
    )
    first, targets = plots[0].rect, browser.find_element(By.CSS_SELECTOR, ".targets table").rect
    assert first["y"] < browser.execute_script("return window.innerHeight")  # on the first screen
    assert first["x"] > targets["x"] + targets["width"] - 1  # beside the targets, not under them
    shoot(browser, "report")


def test_docs_render_the_operations_offline(browser, service):
    browser.get(f"{service}/docs")
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    paths = {el.text for el in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/retrieve/{collection}", "/v1/versions", "/readyz"} <= paths, paths
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(name.startswith(service) for name in fetched), fetched  # nothing from a CDN
    shoot(browser, "docs")


def test_login_dag_list_and_a_rollback_to_previous_from_the_trigger_form(browser, airflow, store):
    airflow.wait_until_up()
    wait = WebDriverWait(browser, 90)
    browser.get(airflow.base_url)
    wait.until(EC.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(airflow.password)
    shoot(browser, "airflow-login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "/auth/login" not in b.current_url)

    browser.get(f"{airflow.base_url}/dags")  # the dag-processor registers the DAGs a few seconds after start
    wait_for(
        lambda: "ebr_rollback" in browser.page_source or browser.refresh(),
        "ebr_rollback in the DAG list",
        120,
        interval=3,
    )
    assert all(dag in browser.page_source for dag in ("ebr_train", "ebr_story_index", "ebr_user_embeddings"))
    shoot(browser, "airflow-dags")

    browser.get(f"{airflow.base_url}/dags/ebr_rollback")
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"))).click()
    dialog = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[role=dialog][aria-modal=true]")))
    version = dialog.find_element(By.NAME, "element_version")
    version.send_keys(Keys.CONTROL, "a")
    version.send_keys(Keys.DELETE)
    version.send_keys("previous")
    dialog.find_element(By.NAME, "element_reason").send_keys("browser test: back to the one before")
    unpause = dialog.find_element(By.XPATH, ".//label[contains(., 'on trigger')]//input[@type='checkbox']")
    assert unpause.is_selected()  # ebr_rollback has no schedule: unpausing it only lets this run start
    shoot(browser, "airflow-trigger-form")
    (submit,) = [b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
    submit.click()

    token = airflow.token()

    def finished_run():
        _, body = airflow.request("GET", "/api/v2/dags/ebr_rollback/dagRuns", token=token)
        runs = body.get("dag_runs", []) if isinstance(body, dict) else []
        return next((run for run in runs if run["state"] in ("success", "failed")), None)

    run = wait_for(
        finished_run,
        "the ebr_rollback run triggered from the form did not finish",
        180,
        interval=2,
        details=airflow.logs,
    )
    assert run["state"] == "success", airflow.logs()
    assert run["conf"]["version"] == "previous"
    kind = store.kind("indexes/stories")
    assert kind.latest() == OLDER
    move = kind.history()[-1]
    assert (move.action, move.from_version, move.to_version) == ("rollback", NEWER, OLDER)
    assert "browser test" in move.reason
    browser.get(f"{airflow.base_url}/dags/ebr_rollback/runs/{run['dag_run_id']}")
    wait_for(lambda: "success" in browser.page_source.lower(), "the run page shows success", 60, interval=2)
    time.sleep(1)  # the grid's colours settle
    shoot(browser, "airflow-rollback-run")
