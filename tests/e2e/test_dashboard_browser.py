"""End to end in a real browser: `bentoml serve`, `streamlit run` and headless Chromium.

Needs /usr/bin/chromium (Debian's `chromium` package) and the `playwright` Python package; its
own browser download (`playwright install`) is not used. The screenshot is saved to
test-artifacts/dashboard.png.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dashboard.client import GameRecClient
from tests.servers import PROJECT_ROOT, free_port, running_process

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STREAMLIT = str(Path(sys.executable).with_name("streamlit"))
SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "dashboard.png"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: apt-get install chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed: pip install playwright"
)


@contextmanager
def running_dashboard(api_url: str, data_dir: Path, log: Path) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on a free port; yields its URL once it is healthy."""
    port = free_port()
    env = {**os.environ, "GAMEREC_API_URL": api_url, "GAMEREC_DATA_DIR": str(data_dir)}
    command = [STREAMLIT, "run", "dashboard/app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    command += ["--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    with running_process(command, f"{url}/_stcore/health", env, log, timeout=60):
        yield url


def searchable_game(client: GameRecClient) -> dict:
    """A popular game (not the most played) that a search by its full title finds first."""
    for game in client.games("", limit=20)["games"][1:]:
        if client.games(game["title"], limit=1)["games"][0] == game:
            return game
    raise AssertionError("no game is found first by its own title")


def test_recommend_in_a_browser(served: str, small_data: Path, tmp_path: Path) -> None:
    api = served
    with (
        running_dashboard(api, small_data, tmp_path / "streamlit.log") as dashboard,
        sync_api.sync_playwright() as playwright,
    ):
        client = GameRecClient(api)
        game = searchable_game(client)
        played = {"time_played": {game["game_id"]: 60.0}, "achievements": {game["game_id"]: 0}}
        body = {"user_id": "dashboard", **played, "genres": [], "top_k": 10}  # as the page sends
        expected = [r["title"] for r in client.recommend(body)["recommendations"]]
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1500},
        )
        try:
            recommend_through_the_page(browser.new_page(), dashboard, game["title"], expected)
        finally:
            browser.close()


def recommend_through_the_page(
    page: sync_api.Page, url: str, title: str, expected: list[str]
) -> None:
    expect = sync_api.expect
    page.goto(url)
    search = page.get_by_label("Search games by title")
    search.fill(title)
    search.press("Enter")
    chosen = page.get_by_role("combobox", name="Game")
    expect(chosen).to_have_value(re.compile(f"^{re.escape(title)} "), timeout=30_000)

    page.get_by_role("button", name="Add to profile").click()
    tables = page.get_by_test_id("stDataFrame")
    expect(tables.first).to_contain_text(title, timeout=30_000)  # the profile

    page.get_by_role("button", name="Recommend").click()
    expect(page.get_by_text("Recommendations", exact=True)).to_be_visible(timeout=30_000)
    results = tables.nth(1)
    for recommended in expected[:3]:
        expect(results).to_contain_text(recommended)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(500)  # let the table finish drawing before the screenshot
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
