"""Personas for the server: the ``text_prompt`` and ``voice_prompt`` query parameters of the PersonaPlex server,
resolved safely inside ``--voice-dir``.

A ``voice_prompt`` is a plain file name in the voice folder (``NATF0.pt``, ``me.safetensors``, ``me.wav``): no
folders, no ``..``, no absolute paths, nothing hidden, and it must resolve to a regular file inside the folder
(a symlink out of it is refused). Anything else is refused before any file is opened. Voices are read once per
file version (path, size, modification time) and kept. A client's role prompt longer than ``max_prompt_tokens`` is
refused (each token is one 80 ms prompt frame that holds a slot before the conversation starts), and messages sent
to clients never name server paths.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..codec.mimi import Mimi
from ..errors import FullduplexError
from ..inference.persona import Persona
from ..inference.prompt import FillerCodes, Voice, build_schedule, role_tokens
from ..inference.voice import VOICE_SUFFIXES, load_voice
from ..lm.config import LMConfig
from ..text.tokenizer import TextTokenizer

log = logging.getLogger("fullduplex.server")


class PersonaError(FullduplexError):
    """A persona request the server refuses (the message goes to the client)."""


def persona_trained(config: LMConfig) -> bool:
    """Whether the LM looks trained with persona prompts: PersonaPlex's Depth Transformer also predicts the user."""
    return config.dep_q > config.own_q


class PersonaLibrary:
    """Builds a session's :class:`~fullduplex.inference.persona.Persona` from its query parameters."""

    def __init__(
        self, mimi: Mimi, config: LMConfig, tokenizer: TextTokenizer, filler: FillerCodes,
        voice_dir: str | Path | None = None, default_voice: str | None = None, default_text: str | None = None,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.mimi, self.config, self.tokenizer, self.filler = mimi, config, tokenizer, filler
        self.max_prompt_tokens = max_prompt_tokens
        self.voice_dir = Path(voice_dir).resolve() if voice_dir is not None else None
        if self.voice_dir is not None and not self.voice_dir.is_dir():
            raise FullduplexError(f"--voice-dir {voice_dir}: no such folder")
        self.default_voice, self.default_text = default_voice, default_text
        self._voices: dict[tuple, Voice] = {}
        self._lock = threading.Lock()
        self.warned = False
        if default_voice is not None:
            self.voice_path(default_voice)  # refuse a bad default at start-up

    def voices(self) -> list[str]:
        """File names of the voices in the voice folder, sorted."""
        if self.voice_dir is None:
            return []
        return sorted(p.name for p in self.voice_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in VOICE_SUFFIXES and not p.name.startswith("."))

    def voice_path(self, name: str) -> Path:
        """The file of voice ``name`` inside the voice folder; :class:`PersonaError` for anything else."""
        if self.voice_dir is None:
            raise PersonaError("this server has no voice folder (--voice-dir); connect without voice_prompt")
        if len(name.encode("utf-8", "surrogatepass")) > 255:  # longer than any file name (ENAMETOOLONG)
            raise PersonaError(f"voice_prompt of {len(name)} characters is too long for a file name (see /api/voices)")
        bad = (not name or "/" in name or "\\" in name or "\0" in name or name.startswith(".") or ":" in name
               or Path(name).is_absolute() or name in (".", ".."))
        if bad:
            raise PersonaError(f"voice_prompt {name!r} must be a file name inside the voice folder (see /api/voices)")
        if Path(name).suffix.lower() not in VOICE_SUFFIXES:
            raise PersonaError(f"voice_prompt {name!r}: unknown kind; expected one of {', '.join(VOICE_SUFFIXES)}")
        try:
            path = (self.voice_dir / name).resolve()
            found = path.parent == self.voice_dir and path.is_file()
        except OSError as e:  # a symlink loop, a name the file system refuses, ...
            log.info("voice_prompt %r: %s", name, e)
            found = False
        if not found:
            raise PersonaError(f"voice_prompt {name!r}: no such voice (see /api/voices)")
        return path

    def persona(self, text: str | None, voice: str | None) -> Persona | None:
        """The persona of a session: ``text`` and ``voice`` from its query (None: the server's defaults). None when
        there is neither a prompt nor a persona-trained model. Runs Mimi for audio voices: call on the model
        thread."""
        # A client's prompt is capped (the server's own --text-prompt is not), checked before any voice is loaded.
        limit, from_client = self.max_prompt_tokens, text is not None
        if from_client and limit is not None and len(text) > 16 * limit:  # refused before tokenizing megabytes
            raise PersonaError(f"text_prompt is {len(text)} characters; this server takes at most {limit} tokens "
                               f"(about {4 * limit} characters)")
        text = self.default_text if text is None else text
        voice = self.default_voice if voice is None else voice
        voice = voice or None
        if not persona_trained(self.config):
            if not (text and text.strip()) and voice is None:
                return None
            if not self.warned:
                log.warning("this model (dep_q=%d) was not trained with persona prompts (PersonaPlex is): the "
                            "prompt is applied but may be ignored or confuse it", self.config.dep_q)
                self.warned = True
        loaded, key = None, ("none",)
        if voice is not None:
            path = self.voice_path(voice)
            try:
                stat = path.stat()
            except OSError as e:
                log.info("voice_prompt %r: %s", voice, e)
                raise PersonaError(f"voice_prompt {voice!r}: no such voice (see /api/voices)") from None
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            with self._lock:
                loaded = self._voices.get(key)
            if loaded is None:
                try:
                    loaded = load_voice(path, self.mimi, self.config)
                except (FullduplexError, OSError, ValueError) as e:
                    log.info("voice_prompt %r: %s", voice, e)  # the full message, paths included, stays here
                    detail = str(e).replace(str(path), voice).replace(str(self.voice_dir), "<voice folder>")
                    raise PersonaError(f"voice_prompt {voice!r}: {detail}") from None
                with self._lock:
                    self._voices[key] = loaded
        tokens = role_tokens(self.tokenizer, text)
        if from_client and limit is not None and len(tokens) > limit:
            raise PersonaError(f"text_prompt is {len(tokens)} tokens; this server takes at most {limit} "
                               f"(--max-prompt-tokens)")
        schedule = build_schedule(self.config, loaded, tokens, self.filler)
        return Persona.from_schedule((key, tuple(tokens)), schedule, self.config)
