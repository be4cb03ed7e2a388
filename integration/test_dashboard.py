"""Issue 19: the web dashboard in a real browser (Debian's chromium, headless) on a real lab.

`shoal dashboard --port 8090` runs in manager1's namespace; chromium runs there too, driven
over its DevTools pipe (integration/cdp.py). The page must list the nodes, scale a service
through its confirmed action, show the new replicas, follow the service's logs and the event
feed; `shoal service ls` must agree. The page's screenshot is docs/dashboard.png (README).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from integration.cdp import Browser, lab_command
from integration.helpers import busybox_lab, needs_root, node_table, wait_until

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("chromium"),
                                 reason="needs Debian's chromium (scripts/setup.sh)")]

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
URL = re.compile(r"http://127\.0\.0\.1:8090/\?token=[A-Za-z0-9_-]+")


def replicas_in_page(browser: Browser, service: str) -> str:
    return browser.evaluate(f"(document.querySelector('tr[data-service=\"{service}\"] "
                            "td.replicas') || {}).textContent || ''")


def test_dashboard_in_a_browser_scales_a_service():
    with busybox_lab("dash", managers=1, workers=1) as lab:
        wait_until(lambda: len(t := node_table(lab, "manager1")) == 2
                   and all(n["status"] == "ready" for n in t.values()), timeout=60,
                   what="2 ready nodes")
        lab.cli("manager1", "service", "create", "--name", "web", "--replicas", "1",
                "busybox:1", "sh", "-c", "while true; do echo hello from $(hostname); "
                "sleep 2; done", timeout=90)
        cmd, env = lab.command("manager1", ["shoal", "dashboard", "--port", "8090"])
        cli = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        browser = None
        try:
            printed: list[str] = []
            found = threading.Event()

            def read() -> None:  # the CLI prints its link, then stays in the foreground
                for line in cli.stdout:
                    printed.append(line)
                    if URL.search(line):
                        found.set()
            threading.Thread(target=read, daemon=True).start()
            assert found.wait(30), f"no dashboard link printed: {''.join(printed)!r}"
            url = URL.search("".join(printed)).group(0)

            browser = Browser(command=lab_command(lab, "manager1"))
            browser.navigate(url)
            # The token became a cookie and left the address bar.
            browser.wait_for("location.pathname === '/' && !location.search", what="redirect")
            browser.wait_for("[...document.querySelectorAll('#nodes tbody tr')]"
                             ".map(r => r.dataset.hostname).sort().join() === 'manager1,worker1'",
                             what="manager1 and worker1 in the nodes table")
            assert browser.evaluate("document.querySelector('#live').textContent") == "live"
            wait_until(lambda: replicas_in_page(browser, "web") == "1/1", timeout=60,
                       what="web 1/1 in the page")

            browser.click('tr[data-service="web"] button.scale')
            browser.wait_for("document.querySelector('#confirm').open", what="the confirmation")
            browser.type_into("#confirm-replicas", "3")
            browser.click("#confirm-ok")
            wait_until(lambda: replicas_in_page(browser, "web") == "3/3", timeout=90,
                       what="web 3/3 in the page")
            services = json.loads(lab.cli("manager1", "service", "ls", "--format", "json").stdout)
            web = next(s for s in services if s["spec"]["name"] == "web")
            assert web["spec"]["mode"]["replicas"] == 3 and web["replicas_status"]["running"] == 3

            # The feed showed the change as it happened, and the logs are followed.
            browser.wait_for("[...document.querySelectorAll('#events li')]"
                             ".some(li => li.textContent.includes('web'))", what="web events")
            browser.click('tr[data-service="web"] button.logs')
            browser.wait_for("document.querySelector('#logs').textContent.includes('hello from')",
                             timeout=30, what="web's log lines")
            browser.wait_for("document.querySelectorAll('#chart polyline').length === 2",
                             what="the chart")
            tasks = browser.evaluate("document.querySelector('#tasks').textContent")
            assert "web.1" in tasks and "web.3" in tasks
            if os.environ.get("SHOAL_DASHBOARD_SCREENSHOT", "1") != "0":
                browser.screenshot(SCREENSHOT)

            # Drain, confirmed: the node's availability changes in the page and for the CLI.
            browser.click('tr[data-hostname="worker1"] button.drain')
            browser.wait_for("document.querySelector('#confirm').open", what="the confirmation")
            browser.click("#confirm-ok")
            browser.wait_for("document.querySelector('tr[data-hostname=\"worker1\"] "
                             "td.availability').textContent === 'drain'", what="worker1 drained")
            assert node_table(lab, "manager1")["worker1"]["availability"] == "drain"
        finally:
            if browser is not None:
                browser.stop()
            cli.terminate()   # the daemon stops the listener once the CLI's request is gone
            try:
                cli.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.wait()
