"""The console on a stack with AUTH_MODE=jwt and the demo feed: the page's own files load without a
token, the API asks for one, and with a token from `analytics token` the overview shows the demo's
services and its streams go live (the token rides on the WebSocket upgrades as access_token)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.browser.conftest import screenshot
from tests.e2e.conftest import ANALYTICS, running_stack, stack_env
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def jwt_stack(tmp_path_factory, mlflow_template):
    data_dir = tmp_path_factory.mktemp("jwt-console")
    (data_dir / "mlflow").mkdir()
    shutil.copyfile(mlflow_template, data_dir / "mlflow" / "mlflow.db")
    env = stack_env(data_dir, AUTH_MODE="jwt")
    with (data_dir / "stack.log").open("w") as log, running_stack(env, log, timeout=90) as stack:
        yield stack


def test_the_console_signs_in_with_a_token_and_goes_live(jwt_stack, page):
    minted = subprocess.run(
        [ANALYTICS, "token", "--scopes", "read"],
        cwd=REPO_ROOT,
        env=jwt_stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = minted.stdout.strip()
    page.goto(jwt_stack.base + "/#/overview")
    form = page.wait_for_selector("#auth-slot form.sign-in")
    assert "Jwt is missing" in form.inner_text()
    page.fill("#token", token)
    page.click("#auth-slot button[type=submit]")
    page.wait_for_selector("#entities .entity", timeout=30_000)
    page.wait_for_selector('#conn[data-state="live"]')
    assert page.locator("#auth-slot form").count() == 0
    screenshot(page, "overview-signed-in")
