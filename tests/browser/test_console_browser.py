"""The fleet console in a real browser: Debian's headless Chromium driven by Selenium through Debian's chromedriver.

One `cvmigrate fleet demo --cutover manual` runs for the module (three
servers doing incremental passes until someone cuts them over); the cases
run in order against it: the page loads with the printed token and shows a
row per server, progress advances live (server-sent events, no reload),
requests without the token -- and a cross-site form POST from another site
-- are refused, and "Cut over now" clicked on the page reaches the
migration's checkpoint (final pass, then stage 3), after which the demo
exits 0.  Screenshots go to $CVMIGRATE_ARTIFACTS (default tests-artifacts/).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvmigrate.controller import fleet_state as fs
from cvmigrate.controller.checkpoint import Checkpoint
from tests.helpers.fleet import wait_for
from tests.helpers.procs import child_env

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SERVERS = 3
ARTIFACTS = Path(os.environ.get("CVMIGRATE_ARTIFACTS") or Path(__file__).resolve().parents[2] / "tests-artifacts")


def _browser(tmp: Path) -> Any:
    """Headless Chromium with a fresh profile; the driver path is explicit (selenium-manager never runs)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp / f"profile-{time.monotonic_ns()}"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1500,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


class Demo:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.out_path = tmp / "demo.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cvmigrate", "fleet", "demo", "--servers", str(SERVERS), "--cutover", "manual",
             "--bandwidth-kbps", "2400", "--files", "300", "--console", "127.0.0.1:0", "--port-file",
             str(tmp / "port"), "--workdir", str(self.work)],
            cwd=tmp, env=child_env(), stdin=subprocess.DEVNULL, stdout=open(self.out_path, "w"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT, text=True)
        self.url = wait_for("console: URL", lambda: re.search(r"^console: (\S+)$", self.output(), re.M), 120)[1]
        self.base = self.url.split("/?")[0]
        self.fleet = self.work / "fleet-state"

    def output(self) -> str:
        return self.out_path.read_text()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console-browser")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    demo = Demo(tmp)
    driver = _browser(tmp)
    try:
        yield {"demo": demo, "driver": driver, "tmp": tmp}
    finally:
        driver.quit()
        if demo.proc.poll() is None:
            demo.proc.terminate()
            try:
                demo.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.proc.kill()
        shutil.rmtree(tmp / "work", ignore_errors=True)


def _rows(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#rows tr.server")


def _progress(driver: Any) -> dict[str, float]:
    return driver.execute_script(
        "const o = {}; document.querySelectorAll('#rows tr.server').forEach(tr => {"
        " o[tr.dataset.server] = parseFloat(tr.querySelector('.pct').textContent); }); return o;")


def _click(driver: Any, element_id: str, timeout: float = 20) -> None:
    """A real click on the element with this id; the table is re-rendered every second, so retry a stale one."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By

    def attempt() -> bool:
        try:
            driver.find_element(By.ID, element_id).click()
            return True
        except (StaleElementReferenceException, NoSuchElementException, ElementClickInterceptedException):
            return False

    wait_for(f"a click on #{element_id}", attempt, timeout, interval=0.1)


def _text(driver: Any, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.ID, element_id).text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def _shot(driver: Any, name: str) -> Path:
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_page_loads_with_the_token_and_shows_every_server(session: dict[str, Any]) -> None:
    driver, demo = session["driver"], session["demo"]
    driver.get(demo.url)
    assert driver.current_url == demo.base + "/"   # the token left the address bar
    wait_for(f"{SERVERS} rows", lambda: len(_rows(driver)) == SERVERS, 30)
    names = [r.get_attribute("data-server") for r in _rows(driver)]
    assert names == [f"demo-{i}" for i in range(1, SERVERS + 1)]
    assert "live" in driver.find_element("id", "conn").text
    cookies = {c["name"]: c for c in driver.get_cookies()}
    assert cookies["cvm_console"]["httpOnly"] and cookies["cvm_console"]["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""   # HttpOnly: not readable by scripts


def _rates(driver: Any) -> dict[str, str]:
    return driver.execute_script(
        "const o = {}; document.querySelectorAll('#rows tr.server').forEach(tr => {"
        " o[tr.dataset.server] = tr.querySelector('.rate').textContent; }); return o;")


def test_progress_advances_live_without_a_reload(session: dict[str, Any]) -> None:
    driver = session["driver"]
    driver.execute_script("window.__marker = 'no reload';")
    # a full pass in flight shows its rate (the demo's 2400 KB/s are split: 800 KB/s each)
    rates = wait_for("a transfer rate on the page", lambda: (lambda r: r if any(r.values()) else None)(_rates(driver)),
                     90, interval=0.2)
    assert any(re.fullmatch(r"\d+(\.\d)? (B|KiB|MiB)/s", v) for v in rates.values()), rates
    _shot(driver, "console-transfer.png")
    first = _progress(driver)
    advanced = wait_for("progress to advance", lambda: (lambda now: now if sum(now.values()) > sum(first.values()) + 5
                                                        else None)(_progress(driver)), 90, interval=0.5)
    assert driver.execute_script("return window.__marker") == "no reload"
    _shot(driver, "console-progress.png")
    wait_for("every server in its incremental passes",
             lambda: all("incremental_passes" in _text(driver, f"row-demo-{i}") for i in range(1, SERVERS + 1)), 120,
             interval=0.5)
    _shot(driver, "console-fleet-table.png")
    assert all(v > 0 for v in advanced.values()), advanced


def test_requests_without_the_token_and_cross_site_posts_are_refused(session: dict[str, Any]) -> None:
    driver, demo, tmp = session["driver"], session["demo"], session["tmp"]
    stranger = _browser(tmp)
    try:
        stranger.get(demo.base + "/")
        assert "Not logged in" in stranger.find_element("tag name", "body").text
        assert not _rows(stranger)
        stranger.get(demo.url)   # the one-time token was used by the admin's browser
        assert "already used" in stranger.find_element("tag name", "body").text
        stranger.get(demo.base + "/api/fleet")
        assert "not logged in" in stranger.find_element("tag name", "body").text
    finally:
        stranger.quit()
    # a page on another site (localhost is not 127.0.0.1) submits a form to the console in the admin's browser
    other = demo.base.replace("127.0.0.1", "localhost")
    driver.get(other + "/metrics")
    driver.execute_script(
        "const f = document.createElement('form'); f.method = 'POST'; f.action = arguments[0];"
        " document.body.appendChild(f); f.submit();", demo.base + "/api/servers/demo-2/pause")
    wait_for("the refusal page", lambda: "not logged in" in driver.find_element("tag name", "body").text
             or "refused" in driver.find_element("tag name", "body").text, 20)
    assert not list((fs.server_dir(demo.fleet, "demo-2") / "requests").glob("*.json"))
    time.sleep(1.5)
    assert fs.server_view(demo.fleet, {"name": "demo-2"})["phase"] == "running"


def test_cut_over_from_the_page_reaches_the_checkpoint(session: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    driver, demo = session["driver"], session["demo"]
    driver.get(demo.base + "/")
    wait_for("rows", lambda: len(_rows(driver)) == SERVERS, 30)
    _click(driver, "row-demo-1")
    wait_for("the detail view", lambda: driver.find_element(By.ID, "detail").is_displayed()
             and "incremental_passes" in _text(driver, "d-timeline"), 20)
    wait_for("the pass history", lambda: "pass 2" in _text(driver, "d-passes"), 60)
    _shot(driver, "console-server-detail.png")
    state = fs.state_file(demo.fleet, "demo-1")

    def checkpoint() -> tuple[bool, str]:
        ck = Checkpoint(state, readonly=True)
        try:
            return ck.is_done("incremental_passes"), ck.passes()[-1]["kind"]
        finally:
            ck.close()

    assert checkpoint()[0] is False
    _click(driver, "cutover-demo-1")
    wait_for("the cut-over file", lambda: fs.cutover_file(demo.fleet, "demo-1").exists(), 10)
    wait_for("demo-1's final pass in its checkpoint", lambda: checkpoint() == (True, "final"), 120)
    wait_for("demo-1 complete on the page", lambda: " done " in f" {_text(driver, 'row-demo-1')} ", 120)
    _shot(driver, "console-after-cutover.png")
    for i in range(2, SERVERS + 1):
        _click(driver, f"cutover-demo-{i}")
    assert demo.proc.wait(timeout=180) == 0, demo.output()
    assert f"fleet demo complete: {SERVERS} migrations" in demo.output()
