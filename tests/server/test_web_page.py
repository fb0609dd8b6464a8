"""The web page at ``GET /``: served from the package with nothing from a CDN, and a real browser (headless Chromium
with a fake microphone playing the speech sample) holding a conversation with the server: audio and text come back
and the page shows them; a full server and a refused microphone each show a clear message.

The browser part needs Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them where it can).
A screenshot of the live page is written to ``test-artifacts/web_page.png`` (or ``$FULLDUPLEX_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from fullduplex.inference import Engine, Sampling
from fullduplex.server.app import STATIC, Server, ServerConfig
from tests.helpers import ASSETS, tiny_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("FULLDUPLEX_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


class LiveServer:
    """The aiohttp app on a free 127.0.0.1 port, run by its own event loop in a background thread."""

    def __init__(self, models, max_sessions: int = 2) -> None:
        mimi, lm, tokenizer = models
        engine = Engine(mimi, lm, Sampling(seed=7), max_sessions=max_sessions)
        self.server = Server(engine, tokenizer, ServerConfig(idle_timeout=10))
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.server.app())
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30)
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def live(models):
    server = LiveServer(models, max_sessions=1)
    yield server
    server.close()


# --- the page as files ----------------------------------------------------------------------------------------
def test_page_and_assets_are_served_from_the_package(live):
    async def fetch():
        async with ClientSession() as client:
            got = {}
            for path in ("", "static/app.js", "static/player.js", "static/style.css",
                         "static/vendor/opus-recorder/recorder.min.js",
                         "static/vendor/opus-recorder/encoderWorker.min.js",
                         "static/vendor/opus-recorder/decoderWorker.min.js",
                         "static/vendor/opus-recorder/decoderWorker.min.wasm"):
                async with client.get(live.url + path) as r:
                    got[path] = (r.status, r.content_type, await r.read())
            async with client.get(live.url + "static/../app.py") as r:
                got["escape"] = (r.status, r.content_type, b"")
            return got

    got = asyncio.run(fetch())
    for path, (status, _, body) in got.items():
        if path != "escape":
            assert status == 200 and body, path
    assert got[""][1] == "text/html" and b"fullduplex" in got[""][2]
    assert got["static/vendor/opus-recorder/decoderWorker.min.wasm"][1] == "application/wasm"
    assert got["escape"][0] == 404  # nothing outside the static folder
    # Nothing is fetched from elsewhere: every script and stylesheet the page loads is relative.
    html = got[""][2].decode()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        if ref.startswith("http"):
            assert ref.startswith("https://github.com/"), ref  # only the footer's plain link
        assert not ref.startswith("//"), ref
    for name in ("app.js", "player.js"):
        assert not re.search(r"https?://\w", (STATIC / name).read_text()), name  # no URL to fetch from


# --- a real browser -------------------------------------------------------------------------------------------
def browser(fake_mic: Path | None, allow_mic: bool = True):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=900,760"):
        options.add_argument(flag)
    if allow_mic:
        options.add_argument("--use-fake-ui-for-media-stream")
    else:
        options.add_argument("--deny-permission-prompts")
    options.add_argument("--use-fake-device-for-media-stream")
    if fake_mic is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_mic}")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@needs_chromium
def test_browser_conversation_full_server_and_refused_mic(live):
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    talker = browser(ASSETS / "speech_en.wav")
    try:
        talker.get(live.url)
        talker.find_element(By.ID, "connect").click()
        stats = talker.find_element(By.ID, "stats")
        wait_for(lambda: talker.find_element(By.ID, "status").get_attribute("data-state") == "live", 30, "handshake")
        # The fake microphone plays the speech sample in a loop; the model answers every frame with audio and text.
        wait_for(lambda: float(stats.get_attribute("data-received-seconds")) >= 2.0, 60, "2 s of the model's audio")
        wait_for(lambda: int(stats.get_attribute("data-text-pieces")) >= 3, 30, "text from the model")
        sent, received = talker.execute_script(  # one refresh's values: the server answers only what it was sent
            "const d = document.getElementById('stats').dataset; return [d.sentSeconds, d.receivedSeconds];")
        assert float(sent) >= float(received) >= 2.0
        transcript = talker.find_element(By.ID, "transcript").text
        assert transcript.strip(), "the page shows no transcript"
        assert re.fullmatch(r"delay \d+ ms", talker.find_element(By.ID, "latency").text)
        assert live.server.engine.active == 1
        talker.save_screenshot(str(ARTIFACTS / "web_page.png"))

        # The one slot is taken: a second visitor is told the server is full, not left waiting.
        second = browser(ASSETS / "speech_en.wav")
        try:
            second.get(live.url)
            second.find_element(By.ID, "connect").click()
            notice = second.find_element(By.ID, "notice")
            wait_for(lambda: notice.is_displayed() and "full" in notice.text, 30, "the server-full message")
            assert "busy" in notice.text
            assert second.find_element(By.ID, "status").get_attribute("data-state") == "error"
            second.save_screenshot(str(ARTIFACTS / "web_page_full.png"))
        finally:
            second.quit()

        talker.find_element(By.ID, "connect").click()  # end the conversation: the slot is freed
        wait_for(lambda: live.server.engine.active == 0, 10, "the slot to be freed")
        assert talker.find_element(By.ID, "status").get_attribute("data-state") == "idle"
    finally:
        talker.quit()

    # A visitor who refuses the microphone gets a message saying so, and no session is opened.
    refuser = browser(None, allow_mic=False)
    try:
        refuser.get(live.url)
        refuser.find_element(By.ID, "connect").click()
        notice = refuser.find_element(By.ID, "notice")
        wait_for(lambda: notice.is_displayed() and "refused" in notice.text, 30, "the refused-microphone message")
        assert live.server.engine.active == 0
    finally:
        refuser.quit()
