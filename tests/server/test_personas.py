"""Personas over real sockets: four clients with four personas (PersonaPlex's text_prompt / voice_prompt query
parameters) each get exactly what `generate` gives for its persona alone, the second round comes from the cache;
malformed voice_prompt values are refused with a message and nothing outside --voice-dir is read."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
import torch
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

import fullduplex as fd
from fullduplex.inference import Engine, Sampling, generate
from fullduplex.inference.persona import PersonaCache
from fullduplex.inference.voice import filler_codes, released_voice, save_released_voice, save_voice
from fullduplex.server import personas as personas_module
from fullduplex.server.app import Server, ServerConfig
from fullduplex.server.personas import PersonaLibrary
from tests.helpers import speech, tiny_models
from tests.server.test_server import converse

GREEDY = Sampling(temp=0, temp_text=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    mimi, lm, tokenizer = tiny_models(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(3)
    # A persona-trained architecture (PersonaPlex), with room in its context for the prompt.
    persona_lm = fd.LMModel(replace(lm.config, dep_q=16, context=64)).eval()
    folder = tmp_path_factory.mktemp("voices")
    g = torch.Generator().manual_seed(0)
    for name in ("A", "B"):
        save_voice(torch.randint(0, 32, (8, 5), generator=g), folder / f"{name}.safetensors", 24000, 12.5, -20.0, "x")
    save_released_voice(released_voice(persona_lm, torch.randint(0, 32, (8, 4), generator=g), filler_codes(mimi)), folder / "C.pt")
    outside = folder.parent / "outside.safetensors"
    save_voice(torch.zeros(8, 3, dtype=torch.long), outside, 24000, 12.5, -20.0, "x")
    (folder / "link.safetensors").symlink_to(outside)
    return mimi, persona_lm, lm, tokenizer, folder


def serve(mimi, lm, tokenizer, folder, cache: PersonaCache, **defaults) -> TestServer:
    library = PersonaLibrary(mimi, lm.config, tokenizer, filler_codes(mimi), folder, **defaults)
    server = Server(Engine(mimi, lm, GREEDY, max_sessions=4, personas=cache), tokenizer, ServerConfig(), personas=library)
    test_server = TestServer(server.app(), host="127.0.0.1")
    test_server.fullduplex = server
    return test_server


PERSONAS = [
    {"text_prompt": "hello", "voice_prompt": "A.safetensors"},
    {"text_prompt": "good", "voice_prompt": "B.safetensors"},
    {"text_prompt": "see you", "voice_prompt": "C.pt"},  # a released-format voice
    {"text_prompt": "", "voice_prompt": ""},  # an empty prompt: the two silences only
]


def test_four_clients_four_personas(models):
    mimi, lm, _, tokenizer, folder = models
    base = speech(0.96)[0]  # whole frames: a last partial frame would wait for more audio
    inputs = [(base * (0.3 + 0.1 * k)).roll(1920 * k, dims=-1) for k in range(4)]
    # What each client must get: `generate` with its persona alone (computed first: torch work on this thread
    # after the server's model thread has run is slow on 2 cores, see Server).
    library = PersonaLibrary(mimi, lm.config, tokenizer, filler_codes(mimi), folder)
    schedules = [library.persona(p["text_prompt"], p["voice_prompt"]).schedule for p in PERSONAS]
    alone = [generate([w], mimi, lm, tokenizer, GREEDY, batch_size=1, prompt=s)[0] for w, s in zip(inputs, schedules, strict=True)]
    swapped = [generate([inputs[1]], mimi, lm, tokenizer, GREEDY, batch_size=1, prompt=s)[0] for s in schedules]
    # The same input with another persona: another reply (random tiny weights, so not with every persona).
    assert any(not torch.equal(other.tokens, alone[1].tokens) for i, other in enumerate(swapped) if i != 1)
    cache = PersonaCache()

    async def main():
        async with serve(mimi, lm, tokenizer, folder, cache) as server:
            url = str(server.make_url("/api/chat"))
            first = await asyncio.gather(*(converse(url, w, p) for w, p in zip(inputs, PERSONAS, strict=True)))
            entries = len(server.fullduplex.engine.personas)
            second = await asyncio.gather(*(converse(url, w, p) for w, p in zip(inputs, PERSONAS, strict=True)))
            async with ClientSession() as client, client.get(server.make_url("/api/voices")) as response:
                voices = await response.json()
            return first, entries, second, voices

    first, entries, second, voices = asyncio.run(main())
    assert entries == 4 and cache.hits >= 4  # the second round started from the cache
    assert voices["voices"] == ["A.safetensors", "B.safetensors", "C.pt", "link.safetensors"] and voices["persona_trained"]
    for result, got, again in zip(alone, first, second, strict=True):
        assert got["handshake"] and not got["errors"] and len(got["pcm"]) > 0
        want = [tokenizer.piece(int(t)).replace("▁", " ") for t in result.tokens[0] if t >= 0 and tokenizer.is_text(int(t))]
        assert len(want) > 2 and got["text"][: len(want)] == want and again["text"][: len(want)] == want


def test_malformed_voice_prompts_are_refused_and_nothing_outside_is_read(models, monkeypatch):
    mimi, lm, _, tokenizer, folder = models
    opened = []
    real = personas_module.load_voice
    monkeypatch.setattr(personas_module, "load_voice", lambda path, *a: opened.append(path) or real(path, *a))
    bad = ["missing.pt", "../outside.safetensors", str(folder.parent / "outside.safetensors"), "sub/A.safetensors",
           "..", ".hidden.pt", "A.txt", "link.safetensors", "..\\outside.safetensors"]

    async def main():
        async with serve(mimi, lm, tokenizer, folder, PersonaCache()) as server:
            url = str(server.make_url("/api/chat"))
            refused = [await converse(url, speech(0.3)[0], {"text_prompt": "hi", "voice_prompt": v}) for v in bad]
            fine = await converse(url, speech(0.5)[0], {"text_prompt": "hi", "voice_prompt": "A.safetensors"})
            return refused, fine

    refused, fine = asyncio.run(main())
    for name, got in zip(bad, refused, strict=True):
        assert not got["handshake"] and got["errors"] and "voice" in got["errors"][0], (name, got)
    assert fine["handshake"] and opened == [folder / "A.safetensors"]  # only the good one was ever opened


def test_a_model_without_persona_training_warns_and_works(models, caplog):
    mimi, _, moshiko_like, tokenizer, folder = models
    caplog.set_level(logging.WARNING, logger="fullduplex.server")

    async def main():
        async with serve(mimi, moshiko_like, tokenizer, folder, PersonaCache(), default_text="be kind") as server:
            url = str(server.make_url("/api/chat"))
            return await converse(url, speech(0.8)[0]), await converse(url, speech(0.8)[0], {"text_prompt": ""})

    prompted, empty = asyncio.run(main())
    assert prompted["handshake"] and len(prompted["pcm"]) > 0 and empty["handshake"]
    assert any("not trained with persona prompts" in r.message for r in caplog.records)
