"""The web console in a real browser (Debian's chromium, headless, driven by Selenium through chromium-driver):
sign in, see a deployment become `running`, kill its engine and see the node turn unhealthy and be replaced,
scale from the page, follow the routing table live, drain a node, sign out. Screenshots are saved under
$INFERIA_ARTIFACTS (default tests/artifacts/, ignored by git); the path is printed."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,900",
)


def artifacts_dir() -> Path:
    base = Path(os.environ.get("INFERIA_ARTIFACTS") or cpl.ROOT / "tests" / "artifacts")
    out = base / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture()
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, DRIVER) if not (os.path.exists(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(
            f"the console's browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
            "apt-get update && apt-get install -y chromium chromium-driver (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="inferia-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll the page (stale elements while the view re-renders are retried)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except (StaleElementReferenceException, NoSuchElementException) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Page:
    def __init__(self, driver: Any, shots: Path) -> None:
        self.d, self.shots, self.n = driver, shots, 0

    def css(self, sel: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.d.find_elements(By.CSS_SELECTOR, sel))

    def one(self, sel: str) -> Any:
        found = self.css(sel)
        return found[0] if found else None

    def text(self, sel: str) -> str:
        e = self.one(sel)
        return str(e.text) if e is not None else ""

    def click(self, sel: str) -> None:
        """Click what `sel` finds; the views re-render every few seconds, so a stale element is found again."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked() -> bool:
            try:
                e = self.one(sel)
                if e is None:
                    return False
                e.click()
                return True
            except StaleElementReferenceException:
                return False

        wait(clicked, 10, f"a click on {sel}")

    def view(self, name: str) -> None:
        self.click(f'#tabs a[data-view="{name}"]')
        wait(lambda: self.one(f"#{name}-view").is_displayed(), 10, f"the {name} view")

    def confirm(self, **fields: str) -> None:
        wait(lambda: self.one("#confirm").is_displayed(), 10, "the confirmation dialog")
        for name, value in fields.items():
            box = self.one(f"#confirm-{name}")
            box.clear()
            box.send_keys(value)
        self.one("#confirm-ok").click()
        wait(lambda: not self.one("#confirm").is_displayed(), 10, "the dialog to close")

    def shot(self, name: str) -> Path:
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        self.d.save_screenshot(str(path))
        return path


def test_console_in_a_real_browser(control_plane: ControlPlane, api: Client, browser: Any) -> None:
    shots = artifacts_dir()
    print(f"\nconsole screenshots: {shots}")
    tag = uuid.uuid4().hex[:6]
    model = api.register_model(**cpl.fake_model(f"ui-{tag}"))
    pool = api.create_pool(f"ui-{tag}", provider="local", max_nodes=4)
    dep = api.deploy(model["name"], pool["name"], replicas=1)
    page = Page(browser, shots)
    row = f'#deployments-table tr[data-deployment="{dep["id"]}"]'
    try:
        # -- sign in: a wrong token is refused, the right one is kept in sessionStorage only
        browser.get(control_plane.api_url + "/ui/")
        wait(lambda: page.one("#login-form").is_displayed(), 20, "the sign-in form")
        page.one("#token").send_keys("it_wrong")
        page.one("#login-button").click()
        wait(lambda: "not the admin token" in page.text("#login-error"), 10, "the refusal")
        page.one("#token").clear()
        page.one("#token").send_keys(control_plane.api_token)
        page.one("#login-button").click()
        wait(lambda: page.one("#tabs").is_displayed(), 10, "the signed-in console")
        assert browser.execute_script("return sessionStorage.getItem('inferia_token')") == control_plane.api_token
        assert browser.execute_script("return localStorage.length") == 0

        # -- the deployment becomes running, one replica ready
        page.view("deployments")
        wait(
            lambda: (
                page.one(row) is not None
                and page.one(row).get_attribute("data-state") == "running"
                and page.text(row + ' td[data-field="replicas"]') == "1 / 1"
            ),
            90,
            "the deployment running 1 / 1 in the page",
        )
        page.shot("deployment-running")

        # -- kill the engine: the node turns unhealthy (events stream) and is replaced (nodes view)
        (node_id,) = [r["id"] for r in api.get_deployment(dep["id"])["replicas"]]
        _, engines = cpl.node_pids(control_plane.settings.data_dir, node_id)
        assert engines, "the replica's engine process"
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        page.view("events")
        # the inventory writes a node's last state per 0.5 s flush: an engine that died is often unhealthy and
        # already ended by its deployment within one flush, so the row is then node.terminated with the reason
        unhealthy = '#events-table tr[data-kind="node.unhealthy"]'
        ended = '#events-table tr[data-kind="node.terminated"]'
        wait(
            lambda: (
                any(node_id in e.text for e in page.css(unhealthy))
                or any(node_id in e.text and "unhealthy" in e.text for e in page.css(ended))
            ),
            60,
            f"node.unhealthy (or node.terminated for being unhealthy) of {node_id} in the events view",
        )
        page.shot("events-node-unhealthy")
        page.view("nodes")
        page.click('#node-state option[value="all"]')
        old = f'#nodes-table tr[data-node="{node_id}"]'
        fresh = f'#nodes-table tr[data-deployment="{dep["id"]}"]'

        def replaced() -> bool:
            old_state = page.one(old + " .state")
            new = [r for r in page.css(fresh) if r.get_attribute("data-node") != node_id]
            return (
                old_state is not None
                and old_state.get_attribute("data-state") in ("unhealthy", "draining", "terminated")
                and any(r.find_element("css selector", ".state").get_attribute("data-state") == "ready" for r in new)
            )

        wait(replaced, 90, "the old node out and a new ready node in the nodes view")
        page.shot("nodes-replaced")
        page.view("deployments")
        wait(lambda: page.text(row + ' td[data-field="replicas"]') == "1 / 1", 60, "running 1 / 1 again")

        # -- scale from the page, with its confirmation
        page.click(row + ' button[data-action="scale"]')
        page.confirm(replicas="2")
        wait(
            lambda: (
                page.text(row + ' td[data-field="replicas"]') == "2 / 2"
                and page.one(row).get_attribute("data-state") == "running"
            ),
            90,
            "the deployment scaled to 2 / 2 in the page",
        )
        page.shot("deployment-scaled")
        assert api.get_deployment(dep["id"])["desired_replicas"] == 2

        # -- the routing table follows by long-poll
        page.view("routing")
        wait(lambda: len(page.css(f'#routing-table tr[data-model="{model["name"]}"]')) == 2, 30, "2 routes")
        version = int(page.one("#routing-meta").get_attribute("data-version"))
        page.shot("routing-live")

        # -- drain a node from the page: it leaves the table at once (live), the deployment replaces it
        page.view("nodes")
        page.click('#node-state option[value=""]')  # alive nodes
        page.click(f'#node-pool option[value="{pool["id"]}"]')
        drainable = f'{fresh} .state[data-state="ready"]'
        wait(lambda: len(page.css(drainable)) == 2, 20, "this pool's 2 ready nodes, filtered")

        def ready_node() -> str | None:
            for r in page.css(fresh):
                if r.find_element("css selector", ".state").get_attribute("data-state") == "ready":
                    return str(r.get_attribute("data-node"))
            return None

        target = wait(ready_node, 20, "a ready node of the deployment")
        page.click(f'#nodes-table tr[data-node="{target}"] button[data-action="drain"]')
        page.confirm()
        page.view("routing")
        wait(
            lambda: (
                not page.css(f'#routing-table tr[data-node="{target}"]')
                and int(page.one("#routing-meta").get_attribute("data-version")) > version
            ),
            30,
            "the drained node out of the live routing table",
        )
        page.view("deployments")
        wait(lambda: page.text(row + ' td[data-field="replicas"]') == "2 / 2", 90, "2 / 2 after the drain")
        page.view("nodes")
        page.click('#node-state option[value="all"]')
        wait(lambda: len(page.css(f'{fresh} .state[data-state="ready"]')) == 2, 20, "2 ready nodes listed")
        page.shot("nodes")
        page.view("pools")
        wait(lambda: page.one(f'#pools-table tr[data-pool="{pool["name"]}"]') is not None, 20, "the pool row")
        page.shot("pools")

        # -- sign out: the token leaves the tab
        page.one("#logout").click()
        wait(lambda: page.one("#login-form").is_displayed(), 10, "the sign-in form again")
        assert browser.execute_script("return sessionStorage.getItem('inferia_token')") is None
    except BaseException:
        page.shot("failure")
        raise
    finally:
        print(f"console screenshots: {shots} ({len(list(shots.glob('*.png')))} files)")
        api.delete_deployment(dep["id"])
        cpl.wait_for(lambda: dep["id"] not in {d["id"] for d in api.list_deployments()}, 90, what="deleted")
        api.delete_pool(pool["id"])
        api.delete_model(model["name"])
