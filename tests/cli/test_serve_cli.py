"""``fullduplex serve``: a busy port is one clear error before any model loads; the page's URL line."""

from __future__ import annotations

import socket

from fullduplex.cli import serve
from fullduplex.cli.main import main


def test_busy_port_fails_before_loading_the_model(capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(serve, "load_models", no_loading)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is not free" in err and "--port" in err


def test_page_url():
    assert serve.page_url("127.0.0.1", 8998, False) == "listening: open http://127.0.0.1:8998/"
    assert serve.page_url("::1", 443, True) == "listening: open https://[::1]:443/"
    line = serve.page_url("0.0.0.0", 8998, True)
    assert "open https://localhost:8998/ on this machine" in line
