"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
``ops/chromium/chromium.sh``) driven by selenium, against ``campaigns api``, ``campaigns worker`` and the provider
simulator as subprocesses on the real services.

A marketer opens the dashboard while her campaign runs, sees its progress advance in the list, opens the campaign
page (live counters, the per-window chart), sees its counts equal the API's, clicks Pause and sees the campaign
paused (on the page and through the API), resumes it, and at the end the list's counts equal the recipient log.
Screenshots go to ``.state/artifacts/`` (the run's artifacts). Without Chromium the test skips locally and FAILS
under ``CI``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from campaigns.settings import Settings
from tests.api.conftest import Api
from tests.entrypoints.conftest import REPO_ROOT, EntryPoints, recipient_counts, wait_finished
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

CI = bool(os.environ.get("CI"))
ARTIFACTS = REPO_ROOT / ".state" / "artifacts"


def _install_chromium() -> dict[str, str]:
    """The project's own installer; {CHROMIUM, CHROMEDRIVER}, or fail (CI) / skip (locally) saying why."""
    try:
        done = subprocess.run([str(REPO_ROOT / "ops" / "chromium" / "chromium.sh"), "install"], capture_output=True,
                              text=True, timeout=900)
        ok, why = done.returncode == 0, (done.stderr or done.stdout).strip()[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, str(exc)
    paths = dict(line.split("=", 1) for line in (done.stdout.splitlines() if ok else []) if "=" in line)
    if not ok or not {"CHROMIUM", "CHROMEDRIVER"} <= set(paths):
        message = f"headless Chromium is not available (ops/chromium/chromium.sh install): {why}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return paths


@pytest.fixture
def browser() -> Iterator[Any]:
    paths = _install_chromium()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # a dev dependency: `pip install -e '.[dev]'`
        (pytest.fail if CI else pytest.skip)(f"selenium is not installed: {exc}")
    options = webdriver.ChromeOptions()
    options.binary_location = paths["CHROMIUM"]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths["CHROMEDRIVER"]))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


def read(driver: Any, css: str) -> str | None:
    """The text of an element the page re-renders on every snapshot (None while it is being replaced)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def card(driver: Any, key: str) -> int | None:
    text = read(driver, f'.card[data-key="{key}"] .v')
    return int(text) if text and text.isdigit() else None


def processed(driver: Any, campaign: str) -> int | None:
    text = read(driver, f'tr[data-id="{campaign}"] td.processed')
    match = re.match(r"(\d+) /", text or "")
    return int(match.group(1)) if match else None


def test_dashboard_shows_a_running_campaign_and_pauses_it(entry: EntryPoints, api: Api, settings: Settings,
                                                          browser: Any):
    admin = entry.token_for(None)

    def ok(answer: Any, status: int = 200) -> Any:
        assert answer.status == status, answer
        return answer.body

    ok(api.call("POST", "/v1/principals", token=admin, json_body={"name": "alice", "role": "marketer"}), 201)
    alice = ok(api.call("POST", "/v1/tokens", token=admin, json_body={"principal": "alice"}), 201)["token"]
    ok(api.call("POST", "/v1/channels", token=admin, json_body={"kind": "sms", "rate_per_s": 40, "burst": 10}))
    template = json.loads((REPO_ROOT / "examples" / "template-sms.json").read_text())
    ok(api.call("POST", "/v1/templates", token=admin, json_body={**template, "approve": True}), 201)
    segments = json.loads(entry.cli("seed", "--customers", "2400").stdout)["segments"]
    payload = json.loads((REPO_ROOT / "examples" / "campaign-sms.json").read_text())
    del payload["start_at"], payload["manual_recipients"]
    payload.update(segments=[segments[-1]], batch_size=200, name="Browser test campaign")
    campaign = ok(api.call("POST", "/v1/campaigns", token=alice, json_body=payload), 201)["id"]
    ok(api.call("POST", f"/v1/campaigns/{campaign}/schedule", token=alice, json_body={"at": None}))
    entry.start_simulator()
    entry.start_worker()

    # The list: log in with alice's token, see the campaign and its progress advance.
    browser.get(api.base + "/")
    wait_for(lambda: browser.find_element("id", "token").is_displayed(), timeout=20, what="the token form")
    browser.find_element("id", "token").send_keys(alice)
    browser.find_element("id", "login-submit").click()
    first = wait_for(lambda: (n := processed(browser, campaign)) and n > 0 and n, timeout=90, interval=0.2,
                     what="the campaign's progress on the dashboard")
    wait_for(lambda: (n := processed(browser, campaign)) and n > first, timeout=60, interval=0.2,
             what=f"progress advancing past {first}")
    assert read(browser, f'tr[data-id="{campaign}"] .state') == "active"
    screenshot(browser, "dashboard-list")

    # The campaign page: live counters, the chart, the buttons alice may use.
    browser.get(api.base + f"/campaigns/{campaign}")
    wait_for(lambda: read(browser, "#status") == "active" and (card(browser, "sent") or 0) > 0, timeout=60,
             interval=0.2, what="the campaign page live")
    wait_for(lambda: browser.find_elements("css selector", "#chart rect.bar-sent"), timeout=30,
             what="the per-window chart")
    assert browser.find_element("id", "pause").is_displayed()
    assert not browser.find_element("id", "resume").is_displayed()
    screenshot(browser, "dashboard-campaign")

    browser.find_element("id", "pause").click()
    wait_for(lambda: read(browser, "#status") == "paused", timeout=30, interval=0.2, what="paused on the page")
    status = ok(api.call("GET", f"/v1/campaigns/{campaign}/status", token=alice))
    assert status["status"] == "paused", status
    audit = ok(api.call("GET", "/v1/audit", token=admin, params={"campaign": campaign}))["items"]
    assert ("alice", "pause_campaign") in [(e["principal"], e["action"]) for e in audit]

    # While paused the counts settle (the batch in flight ends): the page shows what the API says.
    def page_equals_api() -> bool:
        counts = ok(api.call("GET", f"/v1/campaigns/{campaign}/status", token=alice))["analytics"]
        return all(card(browser, key) == counts[key] for key in ("sent", "failed", "skipped", "cancelled"))

    wait_for(page_equals_api, timeout=60, interval=0.5, what="the page's counts equal the API's")
    assert browser.find_element("id", "resume").is_displayed()
    screenshot(browser, "dashboard-paused")

    browser.find_element("id", "resume").click()
    wait_finished(settings, campaign, timeout=240, procs=entry)
    browser.get(api.base + "/")

    def list_equals_log() -> bool:
        log = recipient_counts(settings, campaign)
        text = read(browser, f'tr[data-id="{campaign}"] td.sent')
        return read(browser, f'tr[data-id="{campaign}"] .state') == "completed" and text == str(log.get("sent", 0))

    wait_for(list_equals_log, timeout=60, interval=0.5, what="the list's sent count equal to the recipient log")
    screenshot(browser, "dashboard-completed")
