"""The web page at ``GET /``: served from the package with nothing from a CDN, and a real browser (headless Chromium
with a fake microphone playing the speech sample) holding a conversation with the server: audio and text come back
and the page shows them; a full server and a refused microphone each show a clear message.

The page's AudioContext runs at the sound device's rate (the wire is 24 kHz: the recorder and the decoder
resample). Headless Chromium has no flag to choose its output device's rate (here it runs at 44.1 kHz), so a test
emulates a device at 48 kHz or 24 kHz by giving ``AudioContext`` that default rate before the page loads (the page
itself passes no rate) and checks the rate the page's context really ran at. Firefox ESR is tried when
``firefox-esr`` and ``geckodriver`` are installed (Debian packages no geckodriver).

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
from dataclasses import replace
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

    def __init__(self, models, max_sessions: int = 2, auth_token: str | None = None, personas=None) -> None:
        mimi, lm, tokenizer = models
        engine = Engine(mimi, lm, Sampling(seed=7), max_sessions=max_sessions)
        self.server = Server(engine, tokenizer, ServerConfig(idle_timeout=10, auth_token=auth_token), personas=personas)
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
def device_rate_script(rate: int) -> str:
    """Run before the page: an ``AudioContext`` made without a rate runs at ``rate``, as on a device at that rate."""
    return ("(() => { const Base = window.AudioContext; window.AudioContext = class extends Base { "
            f"constructor(options) {{ super(Object.assign({{ sampleRate: {rate} }}, options || {{}})); }} }}; }})();")


def browser(fake_mic: Path | None, allow_mic: bool = True, device_rate: int | None = None):
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
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    if device_rate is not None:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": device_rate_script(device_rate)})
    return driver


def converse(driver, seconds: float) -> tuple[float, float, int]:
    """Wait until the page is live and has played ``seconds`` of the model's audio with some text; (sent seconds,
    received seconds, the context's rate), read from one refresh of the page's counters."""
    from selenium.webdriver.common.by import By

    stats = driver.find_element(By.ID, "stats")
    wait_for(lambda: driver.find_element(By.ID, "status").get_attribute("data-state") == "live", 30, "handshake")
    # The fake microphone plays the speech sample in a loop; the model answers every frame with audio and text.
    wait_for(lambda: float(stats.get_attribute("data-received-seconds")) >= seconds, 60, f"{seconds} s of audio")
    wait_for(lambda: int(stats.get_attribute("data-text-pieces")) >= 3, 30, "text from the model")
    sent, received, rate = driver.execute_script(  # one refresh's values: the server answers only what it was sent
        "const d = document.getElementById('stats').dataset; return [d.sentSeconds, d.receivedSeconds, d.contextRate];")
    assert float(sent) >= float(received) >= seconds
    assert driver.find_element(By.ID, "transcript").text.strip(), "the page shows no transcript"
    return float(sent), float(received), int(rate)


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
    talker = browser(ASSETS / "speech_en.wav", device_rate=48000)  # a 48 kHz sound device
    try:
        talker.get(live.url)
        talker.find_element(By.ID, "connect").click()
        _, _, rate = converse(talker, 2.0)
        assert rate == 48000 and talker.execute_script("return new AudioContext().sampleRate") == 48000
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


@pytest.fixture(scope="module")
def persona_live(tmp_path_factory):
    """A server that needs an auth token and offers personas (two voices, a default text); its own models (the
    other server's Mimi is streaming)."""
    import torch

    import fullduplex as fd
    from fullduplex.inference.voice import filler_codes, save_voice
    from fullduplex.server.personas import PersonaLibrary

    mimi, lm, tokenizer = tiny_models(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(3)
    lm = fd.LMModel(replace(lm.config, context=64)).eval()  # room for the persona's prompt
    folder = tmp_path_factory.mktemp("voices")
    g = torch.Generator().manual_seed(0)
    for name in ("A", "B"):
        save_voice(torch.randint(0, 32, (8, 5), generator=g), folder / f"{name}.safetensors", 24000, 12.5, -20.0, "x")
    library = PersonaLibrary(mimi, lm.config, tokenizer, filler_codes(mimi), folder, default_voice="A.safetensors",
                             default_text="hello there")
    asked = []
    chosen = library.persona
    library.persona = lambda text, voice: asked.append((text, voice)) or chosen(text, voice)
    server = LiveServer((mimi, lm, tokenizer), max_sessions=1, auth_token="s3cret", personas=library)
    server.asked = asked
    yield server
    server.close()


@needs_chromium
def test_browser_24khz_device_persona_and_auth_token(persona_live):
    """A 24 kHz device, the persona box (voice menu and text from /api/voices, the user's choice sent with the
    connection) and a page opened with ?auth_token=...; without the token the page says the server refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    talker = browser(ASSETS / "speech_en.wav", device_rate=24000)
    try:
        talker.get(persona_live.url + "?auth_token=s3cret")
        persona = talker.find_element(By.ID, "persona")
        wait_for(lambda: persona.is_displayed(), 30, "the persona box")
        voice = Select(talker.find_element(By.ID, "voice-prompt"))
        assert [o.text for o in voice.options][-2:] == ["A.safetensors", "B.safetensors"]
        assert voice.first_selected_option.text == "A.safetensors"
        text = talker.find_element(By.ID, "text-prompt")
        assert text.get_attribute("value") == "hello there"
        voice.select_by_visible_text("B.safetensors")
        text.clear()
        text.send_keys("good morning")
        talker.find_element(By.ID, "connect").click()
        _, _, rate = converse(talker, 1.0)
        assert rate == 24000
        assert persona_live.asked == [("good morning", "B.safetensors")]
        talker.find_element(By.ID, "connect").click()
        wait_for(lambda: persona_live.server.engine.active == 0, 10, "the slot to be freed")

        talker.get(persona_live.url + "?auth_token=wrong")
        talker.find_element(By.ID, "connect").click()
        notice = talker.find_element(By.ID, "notice")
        wait_for(lambda: notice.is_displayed() and "auth token" in notice.text, 30, "the refused-connection message")
        assert "wrong" not in notice.text  # the token is not shown
        assert persona_live.asked == [("good morning", "B.safetensors")]
    finally:
        talker.quit()


FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
GECKODRIVER = shutil.which("geckodriver")


@pytest.mark.skipif(FIREFOX is None or GECKODRIVER is None, reason=(
    "needs Firefox ESR and geckodriver: `apt-get install firefox-esr`; Debian packages no geckodriver (get the "
    "release binary from github.com/mozilla/geckodriver and put it on PATH)") + (
    f" (found firefox {FIREFOX}, no geckodriver)" if FIREFOX else ""))
def test_firefox_conversation(live, tmp_path):
    """Firefox refuses to connect a microphone to a context at another rate: the page must run at the device's.
    Without a sound card Firefox's AudioContext never starts; ALSA's null device (an ``.asoundrc`` in the HOME
    Firefox gets) stands in for one."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.firefox.service import Service

    options = webdriver.FirefoxOptions()
    options.binary_location = FIREFOX
    options.add_argument("-headless")
    for key, value in {"media.navigator.streams.fake": True, "media.navigator.permission.disabled": True,
                       "media.autoplay.default": 0, "media.cubeb.backend": "alsa"}.items():
        options.set_preference(key, value)
    (tmp_path / ".asoundrc").write_text('pcm.!default {\n  type plug\n  slave.pcm "null"\n}\n')
    service = Service(executable_path=GECKODRIVER, env={**os.environ, "HOME": str(tmp_path)})
    driver = webdriver.Firefox(options=options, service=service)
    try:
        driver.get(live.url)
        driver.find_element(By.ID, "connect").click()
        _, _, rate = converse(driver, 1.0)
        assert rate != 24000 and rate == driver.execute_script("return new AudioContext().sampleRate")
    finally:
        driver.quit()
