"""The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

One browser and one collector for the module; each test opens a fresh context (no cookies) and
records every request the page makes and every console message: nothing may leave 127.0.0.1
and nothing may be logged as an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers.dashboard_site import (
    HOSTILE_AGENT,
    HOSTILE_IP,
    HOSTILE_SOURCE,
    HOSTILE_VERSION,
    LOG_COUNTS,
    Site,
    build,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (scripts/system-packages installs Debian's chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    built = build(tmp_path_factory.mktemp("dashboard"))
    yield built
    built.collector.stop()


@dataclass
class Visit:
    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None
        return response

    def sign_in(self, token: str) -> None:
        self.go("/")
        self.page.fill("#token", token)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")


@pytest.fixture
def visit(browser: Any, site: Site) -> Iterator[Visit]:
    context = browser.new_context()
    page = context.new_page()
    seen = Visit(page, site.collector.url)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("console", lambda message: seen.console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen.console_errors.append(str(error)))
    yield seen
    context.close()
    outside = [url for url in seen.requests if urlsplit(url).hostname != "127.0.0.1"]
    assert outside == [], "requests left 127.0.0.1"
    assert seen.console_errors == []


def test_sign_in_with_a_read_token_and_a_wrong_token_is_refused_without_a_hint(visit: Visit, site: Site) -> None:
    visit.go("/")
    assert visit.page.locator("#token").count() == 1
    visit.page.fill("#token", site.agent_token)  # an agent token is not a read token
    with visit.page.expect_navigation():
        visit.page.click("button[type=submit]")
    assert "not a valid read token" in visit.page.inner_text("main")
    assert visit.page.context.cookies() == []
    visit.sign_in(site.read_token)
    assert visit.page.inner_text("h1") == "Overview"
    cookie = visit.page.context.cookies()[0]
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert site.read_token not in cookie["value"]


def test_every_page_shows_what_the_agent_sent(visit: Visit, site: Site) -> None:
    visit.sign_in(site.read_token)
    overview = visit.page.inner_text("main")
    assert "agents up" in overview and visit.page.locator("figure.chart svg polyline").count() >= 1

    visit.go("/ips")
    rows = visit.page.locator("table.ips tbody tr")
    shown = {rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(1).inner_text()
             for i in range(rows.count())}
    for ip, count in LOG_COUNTS.items():
        assert shown[ip] == str(count)

    with visit.page.expect_navigation():
        visit.page.click("table.ips a:text-is('203.0.113.7')")
    assert visit.page.inner_text("h1") == "203.0.113.7"
    detail = visit.page.inner_text("main")
    assert "test-agent" in detail
    assert "nft add element inet remote_uploader remote_uploader_v4 { 203.0.113.7 }" in detail

    visit.go("/agents")
    agents = visit.page.inner_text("table.agents")
    assert "test-agent" in agents and "UP" in agents
    from remote_uploader import __version__

    row = visit.page.inner_text("table.agents tr:has-text('test-agent')")
    assert __version__ in row
    assert re.search(r"\d+ batch(es)?, \d+ records", row) and "reported" in row  # the queue its report said
    sources = visit.page.inner_text("table.agents tr.sources:has-text('auth')")
    assert f"auth\"'é.log {sum(LOG_COUNTS.values())}" in sources  # the agent's log, with its count

    assert visit.go("/decisions").status == 200
    decisions = visit.page.inner_text("main")
    assert "ACTIVE" in decisions and "sshd-bruteforce" in decisions and "30 failed logins" in decisions
    assert "198.51.100.0/24" in decisions and "DELETED" in decisions
    for fmt in ("txt", "json", "nft", "ipset"):
        assert visit.page.locator(f"a[href='/download/blocklist.{fmt}']").count() == 1
    with visit.page.expect_navigation():
        visit.page.click("ul.decisions a:has-text('#')")
    why = visit.page.inner_text("main")
    assert "203.0.113.7" in why and "min_count" in why and "30" in why
    download = visit.page.context.request.get(visit.base + "/download/blocklist.nft")
    assert download.ok and "add table inet remote_uploader" in download.text()


def test_a_filter_changes_the_table(visit: Visit, site: Site) -> None:
    visit.sign_in(site.read_token)
    visit.go("/ips")
    before = visit.page.locator("table.ips tbody tr").count()
    visit.page.fill("input[name=cidr]", "203.0.113.0/24")
    visit.page.fill("input[name=min_count]", "10")
    with visit.page.expect_navigation():
        visit.page.click("form.filters button[type=submit]")
    cells = visit.page.locator("table.ips tbody tr td:first-child").all_inner_texts()
    assert cells == ["203.0.113.7", "203.0.113.9"]
    assert before > len(cells)
    with visit.page.expect_navigation():
        visit.page.click("thead a:has-text('Last seen')")  # sorting keeps the filters
    assert "cidr=203.0.113.0%2F24" in visit.page.url and "sort=last_seen" in visit.page.url


def test_a_hostile_agent_name_is_shown_as_text(visit: Visit, site: Site) -> None:
    dialogs: list[str] = []
    visit.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    visit.sign_in(site.read_token)
    visit.go("/agents")
    assert HOSTILE_AGENT in visit.page.inner_text("table.agents")
    assert visit.page.locator("script").count() == 0
    hostile_row = visit.page.inner_text("table.agents tr.backing-up")
    assert HOSTILE_VERSION in hostile_row and "QUEUE BACKING UP" in hostile_row and "3 batches" in hostile_row
    assert visit.page.locator("img").count() == 0
    assert HOSTILE_SOURCE in visit.page.inner_text("table.agents tr.sources:has-text('Not read yet')")
    visit.go(f"/ips/{HOSTILE_IP}")
    detail = visit.page.inner_text("main")
    assert HOSTILE_AGENT in detail and HOSTILE_SOURCE in detail
    visit.go("/ips")
    assert HOSTILE_SOURCE in visit.page.inner_text("select[name=source]")
    visit.page.select_option("select[name=source]", HOSTILE_SOURCE)
    with visit.page.expect_navigation():
        visit.page.click("form.filters button[type=submit]")
    assert visit.page.locator("table.ips tbody tr td:first-child").all_inner_texts() == [HOSTILE_IP]
    visit.go("/ips?agent=" + HOSTILE_AGENT.replace(" ", "+"))
    assert visit.page.locator("table.ips tbody tr td:first-child").all_inner_texts() == [HOSTILE_IP]
    assert dialogs == []


def test_pages_fit_a_phone_screen(visit: Visit, site: Site) -> None:
    visit.page.set_viewport_size({"width": 375, "height": 740})
    visit.sign_in(site.read_token)
    for path in ("/", "/ips", "/agents", f"/ips/{HOSTILE_IP}"):
        visit.go(path)
        # The page itself never scrolls sideways; wide tables scroll inside their own box.
        assert visit.page.evaluate("document.documentElement.scrollWidth") <= 375, path


def test_without_a_session_every_page_leads_to_the_sign_in_form(visit: Visit, site: Site, tmp_path: Path) -> None:
    for path in ("/ips", "/agents", "/decisions", "/ips/203.0.113.7"):
        visit.go(path)
        assert visit.page.locator("#token").count() == 1, path
        assert "203.0.113.7" not in visit.page.content()
