"""The diagnosis as people see it: the real MLflow UI in headless Chromium.

A real ``mlflow server`` gets a healthy and a stagnant zoo run (small versions, trained side by
side in two processes); the runs table, the run page and the HTML report artifact are then read
in the browser. Screenshots are saved as test output, in
``test-output/screenshots`` (or ``$AUDIODIAG_SCREENSHOT_DIR``). Run it alone with
``python -m pytest -m browser``. Without Chromium the test is skipped, unless
``AUDIODIAG_REQUIRE_BROWSER=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import processes

from mlflow_audiodiag import schema
from mlflow_audiodiag.cli.tracking import TRAINING_VIEW_QUERY

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("AUDIODIAG_CHROMIUM", "/usr/bin/chromium"))
EXPERIMENT = "ui-check"
STAGNANT = "lr_too_low"
TIMEOUT_MS = 60_000
MAX_METRIC_KEYS = 40
# The zoo's healthy run made small enough to train side by side with the stagnant one on a busy
# 2-core machine; the diagnosis benchmark's bundled healthy runs use the same size.
SMALL = {"epochs": 20, "synthetic_clips_per_class": 100, "dim": 64, "layers": 2}
CHILD = """
import json, sys
from mlflow_audiodiag.cli.tracking import use_experiment
from mlflow_audiodiag.zoo.runner import run_scenario
use_experiment(sys.argv[1])
run_scenario(sys.argv[2], **json.loads(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def screenshots() -> Path:
    default = PROJECT_ROOT / "test-output" / "screenshots"
    folder = Path(os.environ.get("AUDIODIAG_SCREENSHOT_DIR", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    if not CHROMIUM.is_file():
        message = (
            f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver, "
            "or point AUDIODIAG_CHROMIUM at a Chromium binary"
        )
        if os.environ.get("AUDIODIAG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def _log_zoo_runs(uri: str, cache_root: Path) -> dict[str, str]:
    """Runs the healthy and the stagnant scenario side by side, as two users would."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "AUDIODIAG_CACHE_DIR": str(cache_root)}
    command = [sys.executable, "-c", CHILD, EXPERIMENT]
    with contextlib.ExitStack() as stack:
        children = {
            name: stack.enter_context(
                processes.spawned(
                    [*command, name, json.dumps(SMALL if name == "healthy" else {})],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
            )
            for name in ("healthy", STAGNANT)
        }  # fmt: skip
        for name, (code, _, err) in processes.communicate_all(children, 900).items():
            assert code == 0, f"zoo {name}: {err[-3000:]}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags[schema.TAG_ZOO_SCENARIO]: run.info.run_id for run in runs}


def _close_assistant(page) -> None:
    """The UI may open an assistant side panel; it would hide the table's right-hand columns."""
    close = page.get_by_role("button", name="Close")
    if close.count() == 1 and close.is_visible():
        close.click()


def test_runs_table_run_page_and_report_show_the_diagnosis(
    mlflow_server, cache_root, browser, screenshots
) -> None:
    run_ids = _log_zoo_runs(mlflow_server.uri, cache_root)
    assert set(run_ids) == {"healthy", STAGNANT}
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name(EXPERIMENT).experiment_id
    base = f"{mlflow_server.uri}/#/experiments/{experiment_id}"
    # Wide, so that the grid renders every column instead of virtualizing those off-screen.
    page = browser.new_page(viewport={"width": 2000, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)

    # Runs table: the verdict and cause tags as columns, one row per run (row-id is the run id).
    page.goto(f"{base}/runs")
    page.get_by_text(f"zoo-{STAGNANT}").first.wait_for()
    _close_assistant(page)
    for tag in (schema.TAG_VERDICT, schema.TAG_PRIMARY_CAUSE):
        page.get_by_role("button", name="Columns").click()
        page.get_by_placeholder("Search columns").fill(tag)
        page.get_by_role("dialog").get_by_text(tag, exact=True).click()
        page.keyboard.press("Escape")
    expected = {STAGNANT: ("stagnant", STAGNANT), "healthy": ("healthy", "none")}
    for scenario, (verdict, cause) in expected.items():
        row = page.locator(f'[role=row][row-id="{run_ids[scenario]}"]')
        row.get_by_text(verdict, exact=True).wait_for()
        cells = "\n".join(row.all_inner_texts()).split("\n")
        assert f"zoo-{scenario}" in cells
        assert verdict in cells and cause in cells, (scenario, cells)
    page.screenshot(path=str(screenshots / "runs_table.png"))

    # The experiment link the CLI prints opens MLflow's model-training view, not GenAI.
    page.goto(f"{base}{TRAINING_VIEW_QUERY}")
    page.wait_for_url(re.compile(r".*/runs\?.*workflowType=machine_learning.*"))
    page.get_by_text(f"zoo-{STAGNANT}").first.wait_for()

    # Run page: the diagnosis summary is the run's description, at most 40 metric keys, and
    # the data in the Datasets panel.
    page.goto(f"{base}/runs/{run_ids[STAGNANT]}{TRAINING_VIEW_QUERY}")
    page.get_by_text("audiodiag verdict: stagnant").wait_for()
    page.get_by_text("Most likely cause: Learning rate too low").wait_for()
    heading = page.get_by_text(re.compile(r"^Metrics \(\d+\)$"))
    heading.wait_for()
    n_keys = int(re.search(r"\d+", heading.inner_text()).group())
    assert 0 < n_keys <= MAX_METRIC_KEYS, heading.inner_text()
    run = MlflowClient(mlflow_server.uri).get_run(run_ids[STAGNANT])
    [dataset] = [d.dataset.name for d in run.inputs.dataset_inputs]
    page.get_by_text(dataset).first.wait_for()  # the Datasets panel
    _close_assistant(page)
    page.screenshot(path=str(screenshots / "run_page.png"), full_page=True)

    # The LR of an lr=1e-7 run reads on a log10 chart (not "0 0 0"), beside the update ratio.
    page.goto(f"{base}/runs/{run_ids[STAGNANT]}/model-metrics{TRAINING_VIEW_QUERY}")
    page.get_by_placeholder("Search metric charts").fill("log10")
    page.get_by_text("log10_lr", exact=True).wait_for()
    page.get_by_text("log10_update_ratio", exact=True).wait_for()
    page.locator("g.ytick text").first.wait_for()
    ticks = [
        float(t.replace("\u2212", "-"))
        for t in page.locator("g.ytick text").all_text_contents()
        if re.fullmatch(r"[\u2212-]?\d+(\.\d+)?", t.strip())
    ]
    assert ticks and min(ticks) <= -7, ticks  # the axis reads 1e-7 as -7
    page.screenshot(path=str(screenshots / "metrics_log10.png"))

    # The HTML report artifact, rendered by the UI in a sandboxed iframe.
    page.goto(f"{base}/runs/{run_ids[STAGNANT]}/artifacts/diagnosis/report.html")
    report = page.frame_locator("iframe").first
    report.get_by_text(f"Diagnosis of zoo-{STAGNANT}").wait_for()
    report.get_by_text("Fix:").first.wait_for()
    body = report.locator("body").inner_text()
    assert "Primary cause" in body and STAGNANT in body
    assert "Raise the optimizer" in body and "learning rate" in body
    page.screenshot(path=str(screenshots / "report.png"))

    # The healthy run's page says so too.
    page.goto(f"{base}/runs/{run_ids['healthy']}")
    page.get_by_text("audiodiag verdict: healthy").wait_for()
    page.screenshot(path=str(screenshots / "healthy_run_page.png"))
