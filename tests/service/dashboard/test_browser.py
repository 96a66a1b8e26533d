"""The dashboard in a real browser: Debian's Chromium driven through Selenium
(chromedriver), against a live server that trains the tiny model.

One module, one browser and one training server for every test, in order: a run is
created from the form, followed live, stopped, resumed and cancelled; one of its
trajectories shows its coloured tokens; two runs are compared and exported; an
environment is tried; a server with tokens is used with the token the user gives.
Screenshots (and the exported images) go to `$OPSD_TEST_ARTIFACTS/dashboard` when that
is set (CI sets it), else to a pytest temporary folder.

Skipped where Chromium, chromedriver or selenium are missing, unless
OPSD_REQUIRE_BROWSER is set (CI sets it: a missing browser fails).
"""

from __future__ import annotations

import base64
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import Client
from service.runs.series import thin
from service.settings import Settings

from ..api.helpers import make_run, trajectory
from ..live import LiveServer
from ..records import set_status

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as exc:
    missing = f"selenium is not installed ({exc})"
else:
    missing = None if CHROMIUM and DRIVER else "chromium or chromedriver is not installed"
if missing:
    if os.environ.get("OPSD_REQUIRE_BROWSER"):
        raise RuntimeError(f"OPSD_REQUIRE_BROWSER is set but {missing}")
    pytest.skip(missing, allow_module_level=True)

pytestmark = pytest.mark.slow
WAIT_S = 120  # the longest any step of a test may wait for the page (model loads included)
TOKEN, READ_TOKEN = "a" * 32, "r" * 32
SMALL_RUN = {"prompts_per_step": 2, "samples_per_prompt": 2, "eval": {"every": 2, "size": 8}}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("OPSD_TEST_ARTIFACTS")
    folder = Path(root) / "dashboard" if root else tmp_path_factory.mktemp("dashboard")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(artifacts) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1100")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(artifacts), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    """A training server: embedded (SQLite, in-process bus), the pipeline in its child."""
    data = tmp_path_factory.mktemp("dashboard-server")
    settings = Settings(
        data_dir=data, device="cpu", poll_s=0.05, heartbeat_s=0.5, read_freshness_s=0.1
    )
    with LiveServer(settings, background=True) as live:
        yield live


@pytest.fixture(scope="module")
def api(server) -> Iterator[Client]:
    with Client(server.url, timeout=60.0) as client:
        yield client


class Page:
    """The browser on one server, with waits and screenshots."""

    def __init__(self, browser, url: str, artifacts: Path) -> None:
        self.browser, self.url, self.artifacts = browser, url, artifacts

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)
        self.until(lambda b: b.execute_script("return document.body.dataset.ready") == "true")

    def until(self, condition, message: str = ""):
        return WebDriverWait(self.browser, WAIT_S).until(condition, message)

    def find(self, css: str):
        return self.until(seen.presence_of_element_located((By.CSS_SELECTOR, css)), css)

    def click(self, css: str) -> None:
        self.until(seen.element_to_be_clickable((By.CSS_SELECTOR, css)), css).click()

    def text(self, css: str) -> str:
        return self.find(css).text

    def shot(self, name: str) -> None:
        """A screenshot of the whole page, not only the window."""
        width, height = self.browser.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];"
        )
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, 6000), "scale": 1}
        shot = self.browser.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        (self.artifacts / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def page(browser, server, artifacts) -> Page:
    return Page(browser, server.url, artifacts)


@pytest.fixture(scope="module")
def followed_run(page, api) -> int:
    """A long run created from the form and followed live until a few steps are in."""
    page.open("/runs/new")
    page.find("#environment option[value=arithmetic]")
    page.find("#steps").send_keys("40")
    for path, value in [("prompts_per_step", 2), ("samples_per_prompt", 2)]:
        field = page.find(f'[id="field-{path}"]')
        field.clear()
        field.send_keys(str(value))
    page.browser.find_element(By.XPATH, "//details[summary='eval']/summary").click()
    for path, value in [("eval.every", 20), ("eval.size", 8)]:
        field = page.find(f'[id="field-{path}"]')
        field.clear()
        field.send_keys(str(value))
    page.shot("01-new-run-form")
    page.click("#create-run")
    page.until(lambda b: "/runs/" in b.current_url and not b.current_url.endswith("/new"))
    run_id = int(page.browser.current_url.rstrip("/").split("/")[-1])
    run = api.get_run(run_id)
    assert (run["steps"], run["config"]["prompts_per_step"], run["config"]["eval"]["size"]) == (
        40,
        2,
        8,
    )
    return run_id


def test_a_run_created_from_the_form_is_followed_live_and_controlled(page, api, followed_run):
    page.open(f"/runs/{followed_run}")
    page.find("#live")
    # Step events arrive over the stream: the event list, the progress and the curves grow.
    page.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#events li code")) >= 3)
    page.find("#chart-reward .main-svg")
    page.until(lambda b: not b.find_element(By.ID, "progress").text.startswith("0 /"))
    page.shot("02-run-live")

    page.click("#action-stop")
    page.until(lambda b: b.find_element(By.CSS_SELECTOR, "#run-status").text == "stopped")
    assert api.get_run(followed_run)["status"] == "stopped"
    page.click("#action-resume")
    page.until(lambda b: b.find_element(By.CSS_SELECTOR, "#run-status").text != "stopped")
    stopped_at = api.get_run(followed_run)["steps_done"]
    page.until(lambda b: "running" in b.find_element(By.ID, "run-status").text)
    page.until(lambda _: api.get_run(followed_run)["steps_done"] > stopped_at)
    page.click("#action-cancel")
    page.until(lambda b: b.find_element(By.CSS_SELECTOR, "#run-status").text == "cancelled")
    assert api.get_run(followed_run)["status"] == "cancelled"
    assert page.find("#action-resume").get_attribute("disabled") is not None
    page.shot("03-run-cancelled")


def test_curves_are_drawn_against_samples_too(page, followed_run):
    page.open(f"/runs/{followed_run}?x=samples")
    page.find("#chart-reward .main-svg")
    assert "samples" in page.text("#chart-reward")


def test_a_trajectory_shows_its_tokens_coloured_by_the_log_ratio(page, api, followed_run):
    page.until(lambda _: api.get_run(followed_run)["steps_done"] >= 1)
    page.open(f"/runs/{followed_run}/trajectories?step=1")
    assert page.browser.find_elements(By.CSS_SELECTOR, "#trajectories tbody tr")
    page.shot("04-trajectories")
    page.click("#trajectories tbody tr a")
    page.find("#tokens")
    tokens = page.browser.find_elements(By.CSS_SELECTOR, "#tokens .token[data-log-ratio]")
    assert tokens, "a trained step has per-token log-ratios"
    assert all("background" in t.get_attribute("style") for t in tokens)
    assert page.text("#prompt") and page.find("#teacher-context")
    page.shot("05-trajectory")


@pytest.fixture(scope="module")
def finished_run(page, api) -> int:
    """A short GRPO run, trained to its end."""
    run_id = api.create_run("arithmetic", algorithm="grpo", steps=2, config=SMALL_RUN)["id"]
    page.until(lambda _: api.get_run(run_id)["status"] == "completed")
    return run_id


def test_a_finished_runs_checkpoint_downloads_from_its_page(page, finished_run):
    page.open(f"/runs/{finished_run}")
    page.click("#checkpoint-list button")
    tar = page.artifacts / f"opsd-run-{finished_run}-step-2.tar"
    page.until(lambda _: tar.exists() and tarfile.is_tarfile(tar))
    with tarfile.open(tar) as archive:
        assert any(name.endswith("config.json") for name in archive.getnames())
    page.shot("06-run-completed")


def test_two_runs_overlaid_against_samples_export_as_png_and_svg(
    page, api, followed_run, finished_run
):
    other = finished_run
    page.open("/")  # picked on the run list
    for run_id in (followed_run, other):
        page.click(f"#runs input[value='{run_id}']")
    page.shot("07-runs")
    page.click("#compare-selected")
    page.find("#compare-chart .main-svg")
    assert page.browser.current_url.endswith(f"/compare?runs={other},{followed_run}")
    page.open(f"/compare?runs={followed_run},{other}&metric=reward_mean")
    page.find("#compare-chart .main-svg")
    assert (
        len(page.browser.find_elements(By.CSS_SELECTOR, "#compare-chart .scatterlayer .trace")) == 2
    )
    assert "samples" in page.text("#compare-chart")
    page.shot("08-compare")
    for format, prefix in [("png", "data:image/png"), ("svg", "data:image/svg+xml")]:
        page.click(f"#export-{format}")
        page.until(
            lambda b, p=prefix: (
                b.find_element(By.ID, "compare-chart").get_attribute("data-exported") or ""
            ).startswith(p)
        )
        page.browser.execute_script(
            "document.getElementById('compare-chart').dataset.exported = ''"
        )
    page.until(lambda _: len(list(page.artifacts.glob("opsd-compare-reward_mean.*"))) == 2)


def test_an_environment_is_tried_and_probed_from_its_page(page):
    page.open("/environments/arithmetic")
    page.click("#try-button")
    page.find("#try-table")
    assert len(page.browser.find_elements(By.CSS_SELECTOR, "#try-table tr")) == 1 + 2 * 2
    page.click("#probe-button")
    assert "teacher_gap" in page.text("#probe-table")
    page.shot("09-environment-try-and-probe")


def test_the_pages_thin_a_series_as_the_api_does(page):
    page.open("/runs/new")
    for length, points in [(2500, 1000), (10, 3), (42, 9), (5, 5)]:
        series = [[step, step / 10] for step in range(1, length + 1)]
        thinned = page.browser.execute_async_script(
            "const [series, points, done] = arguments;"
            "import('/ui/charts.js').then((charts) => done(charts.thin(series, points)));",
            series,
            points,
        )
        assert thinned == [list(point) for point in thin(series, points)], (length, points)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Iterator[LiveServer]:
    """A server that trains nothing, for runs written straight into its record."""
    data = tmp_path_factory.mktemp("dashboard-recorded")
    with LiveServer(Settings(data_dir=data, poll_s=0.05)) as live:
        yield live


def test_a_tool_episode_sets_its_tool_output_apart_as_not_trained_on(browser, artifacts, recorded):
    repo = recorded.app.state.services.repo
    run = make_run(repo)
    per_turn = [{"tokens": 3, "tool": "lookup", "ran": True}, {"tokens": 2, "tool": None}]
    episode = trajectory(0, 0) | {"metrics": {"turns": 2, "tool_calls": 1, "per_turn": per_turn}}
    tokens = ["<call>", "x", "</call>", "<out>", "42", "</out>", "4", "2"]
    ratios = [0.5, -1.5, 0.1, None, None, None, -2.5, 3.0]  # tool output: no ratio
    assert repo.record_step(run.id, 1, "b1", {"loss": 0.5}, 0, [episode], [ratios], [tokens])
    set_status(repo, run.id, "completed")
    (row,), _ = repo.list_trajectories(run.id)

    page = Page(browser, recorded.url, artifacts)
    page.open(f"/runs/{run.id}/trajectories/{row.id}")
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#tokens .segment-label")]
    assert labels == ["model turn 1", "tool output · not trained on", "model turn 2"]
    untrained = browser.find_elements(By.CSS_SELECTOR, "#tokens .segment.untrained .token")
    assert [t.text for t in untrained] == ["<out>", "42", "</out>"]
    scored = browser.find_elements(By.CSS_SELECTOR, "#tokens .token[data-log-ratio]")
    assert [float(t.get_attribute("data-log-ratio")) for t in scored] == [0.5, -1.5, 0.1, -2.5, 3.0]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#turns tr")) == 1 + 2
    page.shot("10-tool-episode")


def test_every_metric_a_run_records_is_charted_the_health_metrics_too(browser, artifacts, recorded):
    repo = recorded.app.state.services.repo
    run = make_run(repo)
    health = {"teacher_signal_frac": 0.5, "teacher_gap": 0.2, "entropy": 1.1, "truncated_frac": 0}
    for step in (1, 2, 3):
        metrics = {"reward_mean": step / 4, "loss": 1 / step, "a_new_metric": step, **health}
        assert repo.record_step(run.id, step, f"b{step}", metrics, step - 1, [trajectory(0, 0)])
    set_status(repo, run.id, "completed")

    page = Page(browser, recorded.url, artifacts)
    page.open(f"/runs/{run.id}")
    page.find("#chart-a-new-metric .main-svg")
    charted = {
        name
        for chart in browser.find_elements(By.CSS_SELECTOR, "#charts .chart")
        for name in chart.get_attribute("data-metrics").split()
    }
    assert {*health, "teacher_gap", "reward_mean", "loss", "a_new_metric", "steps_per_s"} <= charted
    page.shot("11-run-health-metrics")


def test_the_run_list_follows_the_progress_of_active_runs(browser, artifacts, recorded):
    repo = recorded.app.state.services.repo
    run = make_run(repo)  # queued
    page = Page(browser, recorded.url, artifacts)
    page.open("/")
    page.click(f"#runs input[value='{run.id}']")
    progress = f"#runs tr[data-run='{run.id}'] .progress"
    assert page.text(progress).startswith("0/10")
    assert repo.record_step(run.id, 1, "b1", {"loss": 0.5}, 0, [trajectory(0, 0)])
    repo.add_event(run.id, "step", {"step": 1})  # as the worker does after every step
    page.until(lambda b: b.find_element(By.CSS_SELECTOR, progress).text.startswith("1/10"))
    assert page.find(f"#runs input[value='{run.id}']").is_selected()  # the tick is kept
    set_status(repo, run.id, "cancelled")


def test_with_tokens_the_pages_read_and_change_with_the_token_given(browser, artifacts, tmp_path):
    settings = Settings(data_dir=tmp_path, api_token=TOKEN, read_token=READ_TOKEN, poll_s=0.05)
    with LiveServer(settings) as guarded:
        page = Page(browser, guarded.url, artifacts)
        page.open("/")
        assert "401" in page.text("#main .error")
        page.find("#main .error a[href='/token']")
        page.shot("12-token-needed")

        page.open("/token")
        page.find("#token-input").send_keys(READ_TOKEN)
        page.click("#token-save")
        page.until(lambda b: "accepts" in b.find_element(By.ID, "token-check").text)
        page.shot("13-token-view")
        page.open("/")
        page.find("#main h1")
        assert not browser.find_elements(By.CSS_SELECTOR, "#main .error")

        page.open("/runs/new")  # a read token cannot start a run
        page.find("#steps").send_keys("2")
        page.click("#create-run")
        assert "read_only_token" in page.text("#form-message .error")

        page.open("/token")
        field = page.find("#token-input")
        field.clear()
        field.send_keys(TOKEN)
        page.click("#token-save")
        page.until(lambda b: "accepts" in b.find_element(By.ID, "token-check").text)
        page.open("/runs/new")
        page.find("#steps").send_keys("2")
        page.click("#create-run")
        page.until(lambda b: b.current_url.rstrip("/").split("/")[-1].isdigit())
        assert "Run #1" in page.text("#main h1")
        page.shot("14-run-created-with-token")
        page.open("/runs/1")  # queued for good: nothing trains here, its stream stays open
        page.until(lambda b: "live" in b.find_element(By.ID, "live").text)
        page.open("/token")  # leaving the page closes its stream, so the server can stop
        page.click("#token-clear")  # the next page of this browser starts without one
        browser.get("about:blank")
