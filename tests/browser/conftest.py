"""The web console in a real browser: Debian's chromium, headless, driven by Playwright (pointed at
the system browser: nothing is downloaded), against the stack as `make up` starts it, demo feed on.

Every test's page records console errors and uncaught exceptions; a test fails if its page logged
one. `screenshot(page, name)` writes build/screenshots/<name>.png (the README shows one)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, running_stack, stack_env
from tests.helpers import REPO_ROOT

SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed: `make browser-deps` installs Debian's chromium (as root)")
    return path


@pytest.fixture(scope="session")
def console_stack(tmp_path_factory, mlflow_template) -> Iterator[Stack]:
    """`analytics up` with the demo feed, as a newcomer runs it (own DATA_DIR and loopback ports)."""
    data_dir = tmp_path_factory.mktemp("console")
    (data_dir / "mlflow").mkdir()
    shutil.copyfile(mlflow_template, data_dir / "mlflow" / "mlflow.db")
    # A dashboard refresh every 5 s (the shortest allowed) so live panels move within a test.
    env = stack_env(data_dir, WS_HEARTBEAT_SECONDS="1", DASHBOARD_MIN_REFRESH_SECONDS="5")
    with (data_dir / "stack.log").open("w") as log, running_stack(env, log, timeout=90) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not longer: Playwright's sync API keeps an asyncio loop
    running in the main thread while it is open, and the suite's asyncio tests need that thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield instance
        instance.close()


@dataclass
class Problems:
    """What a page logged that a user's devtools would show in red."""

    messages: list[str] = field(default_factory=list)

    def console(self, message) -> None:
        if message.type == "error":
            # Chromium logs every 4xx answer of fetch() itself; an API's refusal (a 400 the page
            # shows with the API's message) is not a page error, nor is a 501 (an endpoint not
            # built yet, which the page says plainly). Anything else still is.
            refused = message.text.startswith(
                (
                    "Failed to load resource: the server responded with a status of 4",
                    "Failed to load resource: the server responded with a status of 501",
                )
            )
            if refused and "/api/v1/" in (message.location or {}).get("url", ""):
                return
            self.messages.append(f"console.error: {message.text} ({message.location})")

    def page_error(self, error) -> None:
        self.messages.append(f"uncaught: {error}")


@contextmanager
def checked_page(browser, viewport: dict, **options) -> Iterator[object]:
    """A page in a fresh browser context; fails the test if the page logged a console error or
    threw (what a user's devtools would show in red)."""
    context = browser.new_context(viewport=viewport, **options)
    opened = context.new_page()
    problems = Problems()
    opened.on("console", problems.console)
    opened.on("pageerror", problems.page_error)
    opened.set_default_timeout(15_000)
    yield opened
    context.close()
    assert not problems.messages, problems.messages


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A desktop-sized page (1280 px)."""
    with checked_page(browser, DESKTOP) as opened:
        yield opened


@pytest.fixture
def phone_page(browser) -> Iterator[object]:
    """A phone-sized page (390 px)."""
    with checked_page(browser, PHONE) as opened:
        yield opened


@pytest.fixture
def kolkata_page(browser) -> Iterator[object]:
    """A desktop page whose viewer is in Asia/Kolkata (UTC+05:30, en-US): times must follow."""
    with checked_page(browser, DESKTOP, timezone_id="Asia/Kolkata", locale="en-US") as opened:
        yield opened


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def api(stack: Stack, method: str, path: str, body: dict | None = None) -> dict:
    """A REST call through the gateway, as the console makes it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())
