"""Speech-to-text sessions (a dep_q 0 model) in the batched engine and over the server's wire protocol: each
session's text equals the generator stepping its input alone, its audio is silent, and the server sends Text
messages and no Audio."""

from __future__ import annotations

import asyncio

import pytest
import torch
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer

import fullduplex as fd
from fullduplex.demo import demo_files, demo_mimi_config
from fullduplex.inference import Engine, Generator, Sampling
from fullduplex.lm import LMConfig
from fullduplex.server import protocol
from fullduplex.server.app import Server, ServerConfig
from fullduplex.text import train_tokenizer
from tests.helpers import speech
from tests.inference.test_engine import run_sessions

GREEDY = Sampling(temp=0, temp_text=0)
STT = LMConfig(
    dim=64, num_heads=4, num_layers=2, hidden_scale=2.0, context=16, text_card=96, card=256, n_q=8, dep_q=0,
    delays=(2,) + (0,) * 8, kv_repeat=2, extra_heads_num_heads=1, extra_heads_dim=3,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo Mimi (a trained codec, so the codes change with the audio), a random STT LM, a tokenizer."""
    torch.manual_seed(0)
    mimi = fd.load_mimi(demo_files()["mimi"], num_codebooks=None, config=demo_mimi_config()).eval()
    lm = fd.LMModel(STT).eval()
    words = ["hello there", "how are you", "fine thanks", "good morning", "see you later", "what is that"] * 8
    return mimi, lm, train_tokenizer(words, tmp_path_factory.mktemp("tok") / "tok", 96, model_type="bpe")


def alone(models, wav: torch.Tensor) -> list[int | None]:
    """The text token of each frame when the generator steps this input by itself (None until the delay)."""
    mimi, lm, _ = models
    gen = Generator(lm, temp=0, temp_text=0)
    out = []
    with torch.inference_mode(), mimi.streaming(1), gen.streaming(1):
        for f in range(wav.shape[-1] // 1920):
            tokens = gen.step(mimi.encode(wav[..., f * 1920 : (f + 1) * 1920]))  # wav [1, 1, S]
            out.append(None if tokens is None else int(tokens[0, 0, 0]))
    return out


def test_engine_steps_stt_sessions_together(models):
    mimi, lm, _ = models
    inputs = {0: speech(1.0), 1: speech(0.8).flip(-1) * 0.5}
    with Engine(mimi, lm, GREEDY, max_sessions=3) as engine:
        _, outputs = run_sessions(engine, inputs, joins={0: 0, 1: 3}, ticks=14)
    for k, wav in inputs.items():
        want = alone(models, wav)
        got = outputs[k][: len(want)]
        assert [o.text for o in got] == want, k
        assert all(o.tokens.shape == (1,) for o in got) and all(float(o.pcm.abs().max()) == 0 for o in got)
        assert len({t for t in want if t is not None}) > 2  # the text changes with the audio: not vacuous


async def transcribe_over_socket(url: str, wav: torch.Tensor, texts: int) -> dict:
    """Send the whole input as Opus; collect messages until ``texts`` Text messages came (or 20 s pass)."""
    got: dict = {"kinds": [], "text": []}
    encoder = protocol.OpusEncoder()
    async with ClientSession() as client, client.ws_connect(url) as ws:
        got["kinds"].append(protocol.decode((await ws.receive(timeout=10)).data).kind)
        await ws.send_bytes(protocol.audio(encoder.encode(wav.numpy()) + encoder.flush()))
        deadline = asyncio.get_running_loop().time() + 20
        while len(got["text"]) < texts and asyncio.get_running_loop().time() < deadline:
            msg = await ws.receive(timeout=20)
            if msg.type != WSMsgType.BINARY:
                break
            message = protocol.decode(msg.data)
            got["kinds"].append(message.kind)
            if message.kind == protocol.Kind.TEXT:
                got["text"].append(message.text())
    return got


def test_server_sends_text_and_no_audio(models):
    mimi, lm, tokenizer = models
    wav = speech(1.0)[0, 0]
    encoder = protocol.OpusEncoder()  # the server hears the audio after an Opus round trip, as the client sends it
    heard = protocol.OpusDecoder().decode(encoder.encode(wav.numpy()) + encoder.flush())
    tokens = alone(models, torch.from_numpy(heard)[None, None])
    want = [tokenizer.piece(t).replace("▁", " ") for t in tokens if t is not None and tokenizer.is_text(t)]
    assert len(want) > 3

    async def main():
        server = Server(Engine(mimi, lm, GREEDY, max_sessions=2), tokenizer, ServerConfig())
        async with TestServer(server.app(), host="127.0.0.1") as test_server:
            return await transcribe_over_socket(str(test_server.make_url("/api/chat")), wav, len(want))

    got = asyncio.run(main())
    assert got["kinds"][0] == protocol.Kind.HANDSHAKE
    assert protocol.Kind.AUDIO not in got["kinds"] and protocol.Kind.ERROR not in got["kinds"]
    assert got["text"] == want
