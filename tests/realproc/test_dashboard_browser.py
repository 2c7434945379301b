"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromedriver (nothing downloads a browser), opens the page served by ``runserver`` on 127.0.0.1
against a running supervisor with tasks flowing on PostgreSQL. It sees the numbers change without
a reload, pauses a queue with a click (and a confirmation), sees no task of that queue start while
paused and all of them run once resumed, saves a screenshot (to docs/dashboard.png too when
TS_DASHBOARD_SCREENSHOT=1), and sees the node listed as stopped after its clean exit. It fails
on any error the browser logs and when the page's script does not refresh the page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT, ROOT, config_toml, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
POOLS = """
[pools.default]
processes = 2

[scheduler]
enabled = true
"""
SCHEDULES = json.dumps(
    {
        "nightly-report": {"task": "tsapp.tasks.noop", "cron": "0 3 * * *"},
        # to a queue no pool serves: the page flags it
        "every-5s": {"task": "tsapp.tasks.noop", "every": "5s", "queue_name": "reports"},
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(db, tmp_path) -> Iterator[str]:
    """``runserver`` on a free loopback port, serving the admin on ``db``; its base URL."""
    port = free_port()
    log = open(tmp_path / "runserver.log", "wb")
    env = {
        **os.environ,
        **db.env,
        "DJANGO_SETTINGS_MODULE": "tsproject.settings_browser",
        "TS_PERIODIC_TASKS": SCHEDULES,
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_until(answers, timeout=30, message=lambda: (tmp_path / "runserver.log").read_text())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Install Debian's chromium and chromium-driver (tests/system-packages.sh does, as root).")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1350",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def seed_history() -> None:
    """An hour of per-minute figures, as the figures chore would have recorded, for the charts."""
    from django.utils import timezone

    from task_supervisor.models import MinuteFigures

    start = timezone.now().replace(second=0, microsecond=0)
    MinuteFigures.objects.bulk_create(
        MinuteFigures(
            minute=start - dt.timedelta(minutes=m),
            queue="default",
            succeeded=40 + (m * 7) % 30,
            failed=(m * 3) % 5,
            started=40,
            latency_ms_total=40 * (20 + (m * 13) % 60),
            latency_ms_max=150 + (m * 17) % 200,
            ready=(m * 11) % 25,
            running=2,
            node="browser-node",
        )
        for m in range(2, 60)
    )


def text(driver, selector: str) -> str:
    """The text of the first element matching ``selector`` (read in one step: the page redraws)."""
    script = "var e = document.querySelector(arguments[0]); return e ? e.textContent : '';"
    return str(driver.execute_script(script, selector))


def cell(driver, queue: str, name: str) -> str:
    return text(driver, f'#ts-queues tr[data-queue="{queue}"] td.{name}')


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_the_dashboard_lives_in_a_browser_and_pauses_a_queue(supervisor, db, site, browser, tmp_path):
    from django.contrib.auth.models import User
    from django_tasks_db.models import DBTaskResult
    from selenium.webdriver.common.by import By
    from tsapp import tasks

    from task_supervisor.models import QueuePause

    sup = supervisor(config_toml(POOLS, extra='node_timeout = "10s"', node="browser-node"), TS_PERIODIC_TASKS=SCHEDULES)
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    seed_history()
    tasks.fail.enqueue("a failure to show")
    flowing = [tasks.sleep.enqueue(0.4) for _ in range(30)]

    browser.get(site + "/admin/login/?next=/admin/task_supervisor/dashboard/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: browser.current_url.endswith("/admin/task_supervisor/dashboard/"), timeout=20)
    browser.execute_script("window.__notReloaded = true;")
    # The admin's login page asks for /favicon.ico, which the test project has not; the dashboard
    # names its own icon. Whatever else the browser logged so far counts.
    before = [e for e in severe(browser) if "/favicon.ico" not in e["message"]]
    assert before == []

    def refreshes() -> int:
        return int(browser.find_element(By.ID, "ts-status").get_attribute("data-refreshes") or 0)

    def node_shown() -> bool:
        return "default" in text(browser, '#ts-nodes tr[data-node="browser-node"]')

    wait_until(node_shown, timeout=30, message=lambda: f"no node row; log:\n{sup.tail()}")
    first = (cell(browser, "default", "ready"), cell(browser, "default", "running"))
    first_refresh = refreshes()
    wait_until(
        lambda: (cell(browser, "default", "ready"), cell(browser, "default", "running")) != first,
        timeout=30,
        message=lambda: f"the queue's numbers stayed {first}",
    )
    wait_until(lambda: refreshes() >= first_refresh + 2, timeout=20, message="the page stopped refreshing")
    assert browser.execute_script("return window.__notReloaded === true;"), "the page was reloaded"
    assert browser.find_elements(By.CSS_SELECTOR, "#ts-chart-finished svg rect"), "no chart drawn"
    assert browser.find_elements(By.CSS_SELECTOR, "#ts-chart-latency svg path")
    assert "ValueError" in text(browser, "#ts-failures")
    wait_until(lambda: "UNSERVED" in cell(browser, "reports", "pools"), timeout=20)
    wait_until(lambda: "every 5" in text(browser, '#ts-schedules tr[data-schedule="every-5s"]').lower(), timeout=20)
    wait_until(lambda: DBTaskResult.objects.filter(id__in=[r.id for r in flowing], status="READY").count() == 0)

    browser.find_element(By.CSS_SELECTOR, 'button[data-verb="pause"][data-target="default"]').click()
    alert = wait_until(lambda: _alert(browser), timeout=10, message="no confirmation asked")
    assert "Pause queue default" in alert.text
    alert.accept()
    wait_until(lambda: "paused by admin:admin" in cell(browser, "default", "paused"), timeout=20)
    # A child trusts its last read of the pauses for rowguard.PAUSES_TTL (0.5 s): enqueue after the
    # page's next refresh (3 s), when every child holds the pause.
    shown = refreshes()
    wait_until(lambda: refreshes() > shown, timeout=20)
    held = [tasks.add.enqueue(i, i) for i in range(5)]
    wait_until(
        lambda: cell(browser, "default", "ready") == "5" and cell(browser, "default", "running") == "0",
        timeout=20,
        message=lambda: (
            f"ready {cell(browser, 'default', 'ready')}, running {cell(browser, 'default', 'running')}; "
            f"pauses {list(QueuePause.objects.values_list('queue', 'since'))}; held started at "
            f"{list(DBTaskResult.objects.filter(id__in=[h.id for h in held]).values_list('started_at', flat=True))}"
        ),
    )
    for _ in range(2):  # two more refreshes (and several claim polls): still nothing started
        seen = refreshes()
        wait_until(lambda seen=seen: refreshes() > seen, timeout=20)
    assert DBTaskResult.objects.filter(id__in=[r.id for r in held], status="READY").count() == 5
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get("TS_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(tmp_path / "dashboard.png", ROOT / "docs" / "dashboard.png")

    browser.find_element(By.CSS_SELECTOR, 'button[data-verb="resume"][data-target="default"]').click()
    wait_until(lambda: _alert(browser), timeout=10).accept()
    wait_until(
        lambda: DBTaskResult.objects.filter(id__in=[r.id for r in held], status="SUCCESSFUL").count() == 5,
        timeout=30,
        message=lambda: f"resumed tasks did not run; log:\n{sup.tail()}",
    )
    assert Path(tmp_path / "dashboard.png").stat().st_size > 10_000

    # A clean exit: the node moves to the stopped ones, with when it was last seen.
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    wait_until(lambda: "clean exit" in text(browser, '#ts-stopped tr[data-node="browser-node"]'), timeout=20)
    assert not text(browser, '#ts-nodes tr[data-node="browser-node"]')
    assert severe(browser) == []


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None
