"""MLflow's UI in a real browser (Debian's chromium, headless, driven by Playwright) over a store
holding a tiny grid and a tiny sweep, each a parent with children, made through the Tracker API
from real tiny trainings. The server is started as `make ui` starts it; screenshots are saved.

Skips only where /usr/bin/chromium is missing (`apt-get install -y chromium` as root, as
.ci/run does); Playwright never downloads a browser here.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from servers import free_port, wait_for

from zipnet import tracking

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the +/- before a parent's name
ASSISTANT_CLOSE = 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The store, then `python -m zipnet.tracking.ui` (what `make ui` runs) on a free port."""
    from tracked_stores import grid, study

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    tracker = tracking.Tracker(uri)
    grid_parent, grid_children = grid(tracker, [["model.init=sqrt"], ["model.init=linear"]])
    study_parent, study_children, _ = study(
        tracker, "tiny", f"sqlite:///{root}/mlruns/optuna.db", {"optim.lr": [0.01, 0.03, 0.1]}, n_trials=3
    )
    torch.set_num_threads(before)
    port, bin_dir = free_port(), os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "zipnet.tracking.ui", "--port", str(port), "--workers", "1", "--tracking-uri", uri],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        link = server.stdout.readline().strip().removeprefix("MLflow UI: ")
        wait_for(f"http://127.0.0.1:{port}/health", server)
        shots = Path(os.environ.get("ZIPNET_SCREENSHOTS", root / "screenshots"))
        shots.mkdir(parents=True, exist_ok=True)
        yield {
            "link": link,
            "base": f"http://127.0.0.1:{port}",
            "experiment": tracker.experiment_id,
            "parents": {"multirun tiny": grid_parent, "tiny": study_parent},
            "children": {
                "model.init=sqrt": grid_children[0],
                "model.init=linear": grid_children[1],
                **{f"tiny #{k}": run_id for k, run_id in enumerate(study_children)},
            },
            "shots": shots,
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_the_printed_link_opens_the_runs_table_with_parents_and_children(ui, page):
    assert re.fullmatch(
        rf"{ui['base']}/#/experiments/{ui['experiment']}/runs\?workflowType=machine_learning", ui["link"]
    )
    page.goto(ui["link"])
    for parent in ui["parents"]:
        page.get_by_text(parent, exact=True).wait_for()
    page.locator(ASSISTANT_CLOSE).click()  # MLflow's chat panel: it hides the table's right half
    for button in page.locator(EXPAND).all():
        button.click()
    for child in ui["children"]:
        page.get_by_text(child, exact=True).wait_for()
    page.screenshot(path=ui["shots"] / "runs.png")
    # every child row: its datasets (train and test) and its logged model
    datasets = page.get_by_text("embedded train 200 seed 0")
    models = page.locator(f'a[href^="#/experiments/{ui["experiment"]}/models/m-"]')
    page.wait_for_function(
        "n => document.querySelectorAll('a[href*=\"/models/m-\"]').length >= n", arg=len(ui["children"])
    )
    assert datasets.count() == len(ui["children"]) and models.count() == len(ui["children"])


def test_a_childs_metrics_page_charts_test_error(ui, page):
    run_id = ui["children"]["tiny #0"]
    page.goto(f"{ui['base']}/#/experiments/{ui['experiment']}/runs/{run_id}/model-metrics{tracking.store.UI_QUERY}")
    page.get_by_text("tiny #0 (test/error)").wait_for()
    page.screenshot(path=ui["shots"] / "metrics.png")


def test_a_childs_artifacts_list_its_learning_curve(ui, page):
    run_id = ui["children"]["model.init=sqrt"]
    page.goto(f"{ui['base']}/#/experiments/{ui['experiment']}/runs/{run_id}/artifacts{tracking.store.UI_QUERY}")
    page.get_by_text("learning_curve.png", exact=True).click()
    page.locator("img[alt='learning_curve.png']").wait_for()  # the preview, drawn from the artifact
    page.screenshot(path=ui["shots"] / "artifacts.png")
