"""The Dagster UI used as a person uses it: `dagster dev` on 127.0.0.1 with a fresh DAGSTER_HOME and data root,
opened in headless Chromium (Debian's `chromium`, driven by Playwright's Python package; nothing downloads a
browser). A person sees every asset group, launches the curation group from the lineage page, watches the run
reach Success, reads an asset's metadata tables (drops by reason, languages) and check results, and switches the
data-refresh schedule on and off on the Automation page.

Each step leaves a screenshot in ``tmp_path/screenshots`` (the path is printed; with ``QWEN2_UI_SCREENSHOTS``
set they are also copied to ``tests/artifacts/ui/``), and a failed step names its screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_crawl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
STARTUP_S = 180  # `dagster dev` loading the code location on two busy cores
CRAWL_DUMP = "dump-2026-11"  # the one crawl dump (a partition of the curation assets) the tests' crawl is put in
RUN_S = 300  # the curation run on the tiny crawl (about 40 s on an idle machine)
UI_MS = 60_000  # one UI element appearing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


REPOSITORIES = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name location { name }
  schedules { name scheduleState { status } }
  sensors { name sensorState { status } } } } } }"""


def _instigators(port: int) -> dict[str, str]:
    """Every schedule's and sensor's status (RUNNING/STOPPED) as the instance stores it."""
    (repo,) = _graphql(port, REPOSITORIES)["repositoriesOrError"]["nodes"]
    states = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    return states | {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}


class Steps:
    """Named steps, each ending in a screenshot; a failing step's error names its screenshot."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.taken = page, folder, []

    def shot(self, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}_{name}.png"
        self.page.screenshot(path=str(path))
        self.taken.append(path)
        return path

    def run(self, name: str, action):
        try:
            action()
        except Exception as error:
            path = self.shot(f"{name}_FAILED")
            raise AssertionError(f"UI step {name!r} failed at {self.page.url} (screenshot: {path}): {error}") from error
        self.shot(name)


@pytest.fixture
def sync_api():
    """Playwright's sync API, or a skip when the browser or Playwright is missing (`make setup` installs both)."""
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (make setup installs it: apt-get install chromium)")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (make setup installs it from requirements.txt)"
    )


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` serving the project on a free port, with the tests' crawl as the data root's crawl/."""
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    make_crawl(data / "crawl" / CRAWL_DUMP)
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "QWEN2_DATA_ROOT": str(data)}
    for name in ("QWEN2_REFRESH_SCHEDULE", "QWEN2_REFRESH_CRON"):  # the schedule as defined: stopped, 03:00 UTC
        env.pop(name, None)
    # the dump's partition, added as `make demo` adds it (the sensor would, once switched on)
    added = subprocess.run(
        [sys.executable, "-m", "dagster_project.crawl_partitions"], env=env, capture_output=True, text=True, check=True
    )
    assert added.stdout.strip() == f"{CRAWL_DUMP}...{CRAWL_DUMP}", added
    log = open(tmp_path / "dagster_dev.log", "wb")
    # Its own process group: `dagster dev` started from a script otherwise ignores SIGTERM/SIGINT, and the group
    # takes the webserver, the daemon, the code server and any run worker down together.
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-m", "dagster_project.definitions"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + STARTUP_S
        groups = None
        while groups is None:
            assert proc.poll() is None, f"dagster dev exited: see {tmp_path / 'dagster_dev.log'}"
            assert time.time() < deadline, f"dagster dev did not serve the assets: see {tmp_path / 'dagster_dev.log'}"
            try:
                nodes = _graphql(port, "{ assetNodes { groupName } }")["assetNodes"]
                groups = sorted({n["groupName"] for n in nodes}) or None
            except (OSError, AssertionError, KeyError, TypeError):
                pass
            if groups is None:
                time.sleep(1)
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "groups": groups}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_a_person_runs_curation_from_the_ui(sync_api, dagster_dev, tmp_path):
    expect = sync_api.expect
    folder = tmp_path / "screenshots"
    folder.mkdir()
    print(f"\nUI screenshots: {folder}")
    base, port, groups = dagster_dev["url"], dagster_dev["port"], dagster_dev["groups"]
    assert {"curation", "synthesis", "pretraining"} <= set(groups), groups

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_MS)
            # A fresh instance greets its first visitor with a community sign-up dialog: skip it whenever it shows.
            # It can open behind another dialog (the partition chooser), which takes the pointer: dispatch the click
            # to the button itself.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda: page.get_by_role("button", name="Skip").dispatch_event("click"),
            )
            steps = Steps(page, folder)
            try:
                _walk_through(page, steps, expect, base, port, groups)
            finally:
                print("UI screenshots taken:", ", ".join(p.name for p in steps.taken))
                if os.environ.get("QWEN2_UI_SCREENSHOTS"):
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    for stale in ARTIFACTS.glob("*.png"):
                        stale.unlink()
                    for path in steps.taken:
                        shutil.copy(path, ARTIFACTS / path.name)
                    print(f"copied to {ARTIFACTS}")
        finally:
            browser.close()


def _walk_through(page, steps: Steps, expect, base: str, port: int, groups: list[str]) -> None:
    def nav(href: str):
        """Click an entry of the left navigation (its links carry an icon, so their names are not plain)."""
        page.locator(f'a[href="{href}"]').first.click()

    # 1. The lineage page lists every asset group (the code location's groups, as GraphQL reports them).
    def asset_graph():
        page.goto(f"{base}/asset-groups")
        for group in groups:
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        expect(page.get_by_role("button", name="Materialize all")).to_be_visible()

    steps.run("asset_graph_groups", asset_graph)

    # 2. Select the curation group, narrow the graph to it and materialize it.
    def select_curation():
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        # The sign-up dialog may show while the context menu is open, and skipping it closes the menu: open it again.
        menu = page.get_by_text("Filter to this group")
        for attempt in range(5):
            page.get_by_text("curation", exact=True).first.click(button="right")
            try:
                menu.wait_for(state="visible", timeout=15_000)
                break
            except PlaywrightTimeout:
                if attempt == 4:
                    raise
        menu.click()
        for asset in ("raw_documents", "language_filtered_documents", "quality_filtered_documents"):
            expect(page.get_by_text(asset, exact=True).first).to_be_visible()
        expect(page.get_by_text("synthesis", exact=True)).to_have_count(0)

    steps.run("curation_group_selected", select_curation)

    def launch():
        page.get_by_role("button", name="Materialize all").click()
        # The curation assets are partitioned by crawl dump: the dialog chooses the dumps. All of them (here the
        # one) are launched as a backfill, which the daemon turns into one run (single-run backfill policy).
        dialog = page.get_by_role("dialog").filter(has_text="Partition selection")
        dialog.get_by_role("button", name="All", exact=True).click()
        expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
        steps.shot("choose_partitions")
        dialog.get_by_role("button", name=re.compile(r"^Launch")).last.click()
        expect(dialog).to_have_count(0)

    steps.run("run_launched", launch)

    # 3. Open the run from the Runs page and watch it reach Success.
    def open_run():
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        nav("/runs")  # Runs
        run_link = page.locator('a[href^="/runs/"]').filter(has_text=re.compile(r"^[0-9a-f]{8}$")).first
        # The daemon starts the backfill's run on one of its next ticks (later on a busy machine), and the runs table
        # fills in after the page has loaded: wait for the link after each reload, not just look.
        deadline = time.time() + 3 * UI_MS / 1000
        while True:
            try:
                run_link.wait_for(state="visible", timeout=10_000)
                break
            except PlaywrightTimeout:
                assert time.time() < deadline, "the backfill started no run"
                page.reload()
        run_link.click()
        expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))

    steps.run("run_page", open_run)
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    def run_succeeds():
        status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        expect(status).to_be_visible(timeout=RUN_S * 1000)
        assert status.inner_text() == "Success", f"the run ended {status.inner_text()}"
        expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()

    steps.run("run_success", run_succeeds)
    query = f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status assetSelection {{ path }} }} }} }}'
    run = _graphql(port, query)["runOrError"]
    assert run["status"] == "SUCCESS", run
    assert {"raw_documents", "deduplicated_documents"} <= {k["path"][-1] for k in run["assetSelection"]}

    # 4. Open the final curation asset from the catalog and read its metadata tables and its checks.
    def open_asset():
        nav("/assets")  # Catalog
        page.locator('a[href="/assets/deduplicated_documents"]').first.click()
        expect(page.get_by_text("Metadata", exact=True).first).to_be_visible()

    steps.run("asset_overview", open_asset)

    def metadata_row(key: str):
        # the outer table's row whose key cell is `key` (its value cell holds the nested table)
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
        row.scroll_into_view_if_needed()
        return row

    def drops_by_reason():
        row = metadata_row("drops_by_reason")
        for reason in ("exact_duplicate", "near_duplicate"):
            expect(row.get_by_text(reason, exact=True)).to_be_visible()

    steps.run("metadata_drops_by_reason", drops_by_reason)

    def languages():
        row = metadata_row("languages")
        for language in ("en", "de", "zh"):
            expect(row.get_by_text(language, exact=True)).to_be_visible()

    steps.run("metadata_languages", languages)

    def checks():
        page.get_by_role("tab", name="Checks").click()
        for check in ("schema", "non_empty", "duplicate_rate"):
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        expect(page.get_by_text("Succeeded")).to_have_count(3)
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()

    steps.run("asset_checks", checks)

    # 5. The schedule and the sensor on the Automation page; switch the schedule on, then off again.
    def automation():
        nav("/automation")  # Automation
        expect(page.get_by_text("data_refresh_schedule", exact=True)).to_be_visible()
        expect(page.get_by_text("new_crawl_files_sensor", exact=True)).to_be_visible()

    steps.run("automation", automation)
    assert _instigators(port) == {"data_refresh_schedule": "STOPPED", "new_crawl_files_sensor": "STOPPED"}

    # the on/off switch in the schedule's row (the row's other checkbox selects it for bulk actions)
    switch = page.locator(
        "xpath=//*[text()='data_refresh_schedule']/ancestor::*[.//label[contains(@class,'Switch')]][1]"
        "//label[contains(@class,'Switch')]"
    )

    def wait_for_schedule(status: str):
        deadline = time.time() + UI_MS / 1000
        while _instigators(port)["data_refresh_schedule"] != status:
            assert time.time() < deadline, f"the schedule did not become {status}"
            time.sleep(0.5)

    def schedule_on():
        # both rows' switches first: while the schedule's is still loading, the nearest ancestor with a switch is the
        # whole list and the sensor's switch is the one found (a fresh-clone .ci/run turned the sensor on)
        expect(page.locator("xpath=//label[contains(@class,'Switch')]")).to_have_count(2)
        expect(switch).to_have_count(1)
        expect(switch.locator("input")).not_to_be_checked()
        switch.click()
        expect(switch.locator("input")).to_be_checked()
        wait_for_schedule("RUNNING")

    steps.run("schedule_on", schedule_on)
    assert _instigators(port)["new_crawl_files_sensor"] == "STOPPED"

    def schedule_off():
        switch.click()
        expect(switch.locator("input")).not_to_be_checked()
        wait_for_schedule("STOPPED")

    steps.run("schedule_off", schedule_off)
