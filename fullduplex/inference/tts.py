"""Kyutai TTS (delayed streams modelling): text in, speech out, one or two speakers, with word times.

The model writes a padded text stream and, ``delay_steps`` frames later, the audio (all n_q codebooks, no user
stream). It does not read the script directly: each frame it predicts whether a new word starts (``new_word``)
or not (``pad``), and a small state machine on the host feeds the next word's tokens into the text stream over
the following frames, while a second text stream, multiplexed into the same token, shows the word
``second_stream_ahead`` words ahead. Speakers: a voice embedding per speaker ([1, 512, 125] each, the
``speaker_wavs`` condition, attended by cross-attention); turns alternate, the first speaker's turns marked by
``main`` (1), the other's by ``other`` (2). ``cfg`` / ``control`` conditions: a model trained with CFG
distillation takes its guidance strength as the ``cfg`` condition ("1.0" .. "4.0"); otherwise guidance runs two
rows per item (:class:`~fullduplex.inference.generator.Generator`, null row without text).

    tts = TTS(lm, tokenizer, delay_steps=16, second_stream_ahead=2)
    entries = tts.entries(["Hello there.", "Hi! How are you?"])       # two turns: two speakers
    result = tts.generate([entries], [tts.conditions([voice_a, voice_b], cfg=2.0)])
    result.frames                                                     # [B, 1 + n_q, T] text and audio codes
    result.words[0]                                                   # [(word, step, speaker), ...]

Audio frame j (decode ``frames[..., delay_steps:]``) plays the text the model consumed at step j: a word taken
at step s starts at ``s / frame_rate`` seconds.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..lm.conditioners import null_conditions, voice_condition
from ..lm.model import UNGENERATED_TOKEN, ZERO_TOKEN, LMModel
from .generator import Generator

NEW_WORD, MAIN_SPEAKER, OTHER_SPEAKER, PAD = 0, 1, 2, 3  # the TTS text vocabulary's special tokens
MAX_SPEAKERS = 5  # voice slots of the speaker_wavs condition
_BREAK = re.compile(r"<break\s+time=\"(\d+(?:\.\d*)?)s\"\s*/?>")


@dataclass
class Entry:
    """One script word: its ``tokens`` (a turn's first word starts with the speaker's token), its ``text``,
    ``padding`` (frames the model must pad after taking it; a pause ``<break time="1s"/>`` is an entry with no
    tokens) and ``speaker`` (0 the first, 1 the second)."""

    tokens: list[int]
    text: str
    padding: int = 0
    speaker: int = 0


def script_entries(
    encode: Callable[[str], list[int]], turns: Sequence[str], frame_rate: float, multi_speaker: bool = True,
    padding_between: int = 0,
) -> list[Entry]:
    """The entries of a script: ``turns`` alternate speakers, starting with the first (an empty first turn starts
    with the second). Colons read as spaces, parentheses and typographic apostrophes are normalised, and
    ``<break time="0.5s"/>`` inserts a pause of that length. ``padding_between`` > 0 makes the model pad about
    that many frames between words (clearer articulation)."""
    entries: list[Entry] = []
    last_speaker = None
    for index, turn in enumerate(turns):
        speaker = index % 2
        text = turn.replace("\u2019", "'").replace(":", " ").replace("(", "").replace(")", "")
        first = True
        for piece in re.split(r"(<break\s+time=\"\d+(?:\.\d*)?s\"\s*/?>)", text):
            pause = _BREAK.fullmatch(piece)
            if pause:
                entries.append(Entry([], "", int(round(float(pause.group(1)) * frame_rate)), speaker))
                continue
            for word in piece.split():
                tokens = list(encode(word))
                if first and multi_speaker and last_speaker != speaker:
                    tokens.insert(0, MAIN_SPEAKER if speaker == 0 else OTHER_SPEAKER)
                    last_speaker = speaker
                first = False
                padding = max(0, padding_between + len(tokens) - 1) if padding_between > 0 else 0
                entries.append(Entry(tokens, word, padding, speaker))
    return entries


@dataclass
class _Reader:
    """How far one item has read its script (the host-side state machine)."""

    entries: deque[Entry]
    remaining_padding: int  # pads the model may still choose before it must take a word
    forced_padding: int  # pads it must still write
    queued: deque[int] = field(default_factory=deque)  # the current word's tokens still to feed
    ahead: deque[int] = field(default_factory=deque)  # the look-ahead word's tokens still to feed (second stream)
    end_step: int | None = None  # the step it asked for a word past the last one
    words: list[tuple[str, int, int]] = field(default_factory=list)  # (word, step taken, speaker)

    def tokens_ahead(self, n: int) -> list[int]:
        """The tokens of the n-th word still to come (pauses skipped), or none."""
        for entry in self.entries:
            if entry.tokens:
                n -= 1
                if n == 0:
                    return entry.tokens
        return []


@dataclass
class TTSResult:
    """``frames`` [B, 1 + n_q, T]: step t's text (muxed with the look-ahead stream) and audio codes, aligned
    (-2 before the first, -1 where no audio is written yet); ``end_steps`` per item: the step past its last word
    (None: the script did not fit in ``max_steps``); ``words`` per item: (word, step, speaker)."""

    frames: torch.Tensor
    end_steps: list[int | None]
    words: list[list[tuple[str, int, int]]]


class TTS:
    """Kyutai TTS over an :class:`~fullduplex.lm.LMModel` with ``user_audio`` False (see the module docstring).

    ``delay_steps``: frames between a word and its audio (``tts_config.audio_delay`` x frame rate);
    ``second_stream_ahead``: how many words ahead the second text stream reads (``tts_config``); ``temp`` for
    text and audio; ``cfg_coef``: guidance (given as the ``cfg`` condition to a model trained with it, else two
    rows per item); ``initial_padding`` / ``max_padding``: frames before the first word / most pads in a row.
    """

    def __init__(
        self, lm: LMModel, encode: Callable[[str], list[int]], delay_steps: int, second_stream_ahead: int = 0,
        frame_rate: float = 12.5, temp: float = 0.6, top_k: int = 250, top_k_text: int = 25, cfg_coef: float = 1.0,
        initial_padding: int = 2, max_padding: int = 8, final_padding: int = 4, seed: int | None = None,
    ) -> None:
        cfg = lm.config
        if cfg.user_audio:
            raise ValueError("this LM hears a user: a TTS model has no user stream (config.json tts_config)")
        self.lm, self.encode, self.delay_steps, self.ahead, self.frame_rate = lm, encode, delay_steps, second_stream_ahead, frame_rate
        self.card = cfg.text_card + 1  # the text vocabulary with its initial token: the mux base
        self.temp, self.top_k, self.top_k_text, self.seed = temp, top_k, top_k_text, seed
        self.initial_padding, self.max_padding, self.final_padding = initial_padding, max_padding, final_padding
        provider = lm.condition_provider
        self.names = [] if provider is None else provider.names
        self.distilled = "cfg" in self.names  # guidance strength is a condition
        self.cfg_coef = cfg_coef
        if self.distilled:
            values = provider.conditioners["cfg"].possible_values or {}
            if format(cfg_coef, ".1f") not in values and cfg_coef != 1.0:
                raise ValueError(f"this model takes guidance strengths {sorted(values)} (cfg_coef {cfg_coef:g} is not one)")

    @property
    def multi_speaker(self) -> bool:
        return "speaker_wavs" in self.names

    def entries(self, turns: Sequence[str], padding_between: int = 1) -> list[Entry]:
        """:func:`script_entries` for this model's tokenizer and speakers."""
        return script_entries(self.encode, turns, self.frame_rate, self.multi_speaker, padding_between)

    def conditions(self, voices: Sequence[torch.Tensor] = ()) -> dict[str, object]:
        """One item's conditions: its voice embeddings [1, C, T] (speaker 0, 1, ...), the guidance strength as
        the ``cfg`` condition (models trained with it) and ``control`` "ok"."""
        out: dict[str, object] = {}
        for name in self.names:
            if name == "speaker_wavs":
                out[name] = voice_condition(list(voices), MAX_SPEAKERS) if voices else None
            elif name == "cfg":
                out[name] = format(self.cfg_coef, ".1f") if self.cfg_coef != 1.0 else None
            elif name == "control":
                out[name] = "ok"
            else:
                out[name] = None
        return out

    # --- the state machine ------------------------------------------------------------------------------------
    def _process(self, step: int, reader: _Reader, token: int) -> int:
        """The model sampled ``token`` at ``step``: the text token it reads instead (the script's next token, a
        pad, or the start of a word; muxed with the look-ahead stream)."""
        if token not in (NEW_WORD, PAD):
            token = PAD
        if reader.queued or reader.forced_padding > 0:
            token = PAD
        elif reader.remaining_padding <= 0:
            token = NEW_WORD
        if token == NEW_WORD:
            if reader.entries:
                entry = reader.entries.popleft()
                if entry.tokens:
                    reader.words.append((entry.text, step, entry.speaker))
                    reader.queued.extend(entry.tokens)
                    if self.ahead:
                        reader.ahead.extend(reader.tokens_ahead(self.ahead))
                    reader.remaining_padding = self.max_padding
                else:
                    token = PAD  # a pause
                reader.forced_padding = entry.padding
            else:  # past the last word
                token = NEW_WORD if self.ahead and reader.end_step is None else PAD
                if reader.end_step is None:
                    reader.end_step = step
        if token == PAD:
            reader.remaining_padding = max(0, reader.remaining_padding - 1)
            reader.forced_padding = max(0, reader.forced_padding - 1)
            out = reader.queued.popleft() if reader.queued else PAD
        else:
            out = NEW_WORD
        if not self.ahead:
            return out
        second = -1  # none: an all-zero embedding
        if out == NEW_WORD:  # the word mark goes to the second stream, the first goes on with the word
            second = NEW_WORD
            out = reader.queued.popleft() if reader.queued else PAD
        elif reader.ahead:
            second = reader.ahead.popleft()
        return (second + 1) * self.card + out

    # --- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, scripts: Sequence[Sequence[Entry]], conditions: Sequence[dict], max_steps: int = 30000) -> TTSResult:
        """Speak each item's entries under its conditions (one batch). Stops ``delay_steps + final_padding``
        frames after the last item's end, or after ``max_steps``."""
        B, cfg = len(scripts), self.lm.config
        if len(conditions) != B:
            raise ValueError(f"{B} scripts but {len(conditions)} conditions")
        guided = self.cfg_coef != 1.0 and not self.distilled
        gen = Generator(self.lm, self.temp, self.temp, self.top_k, self.top_k_text, self.seed,
                        cfg_coef=self.cfg_coef if guided else 1.0, cfg_no_text=True)
        readers = [_Reader(deque(entries), self.initial_padding, self.initial_padding) for entries in scripts]
        device = next(self.lm.parameters()).device
        no_user = torch.zeros(B, 0, 1, dtype=torch.long, device=device)
        delays = cfg.delays[1 : 1 + cfg.dep_q]
        frames: list[torch.Tensor] = []
        step = 0

        def text_hook(text: torch.Tensor) -> torch.Tensor:
            out = [self._process(step, r, int(t)) for r, t in zip(readers, text.tolist(), strict=True)]
            return torch.tensor(out, dtype=text.dtype, device=text.device)

        audio_starts = torch.tensor(delays, device=device) + self.delay_steps  # [dep_q] first step each codebook speaks

        def audio_hook(audio: torch.Tensor) -> torch.Tensor:
            silent = step < audio_starts  # [dep_q]
            return torch.where(silent[None], torch.full_like(audio, ZERO_TOKEN), audio)

        with gen.streaming(B):
            if self.lm.condition_provider is not None:
                for b, cond in enumerate(conditions):
                    gen.set_conditions(b, cond, null_conditions(cond) if guided else None)
            for step in range(max_steps):  # noqa: B007 (the hooks read it)
                ends = [r.end_step for r in readers]
                if all(e is not None for e in ends) and step >= max(ends) + self.delay_steps + self.final_padding:
                    break
                out = gen.step(no_user, text_hook=text_hook, audio_hook=audio_hook, run_depth=step >= self.delay_steps)
                if out is not None:
                    frames.append(out)
        tokens = torch.cat(frames, dim=-1) if frames else torch.full((B, 1 + cfg.dep_q, 0), UNGENERATED_TOKEN)
        return TTSResult(tokens.cpu(), [r.end_step for r in readers], [r.words for r in readers])


@dataclass
class Speech:
    """One item's speech: ``audio`` [1, S] float32 at the codec's rate, and its ``words`` as (text, start, end,
    speaker) with times in seconds (a word ends where the next one starts; the last at the end of the script)."""

    audio: torch.Tensor
    words: list[tuple[str, float, float, int]]


@torch.no_grad()
def render(tts: TTS, result: TTSResult, mimi, item: int) -> Speech:
    """Decode item ``item`` of ``result`` with ``mimi`` (a :class:`~fullduplex.codec.Mimi` holding n_q
    codebooks): the audio from the first word to the end of the script, and the word times on it."""
    delay = tts.lm.config.max_delay
    codes = result.frames[item : item + 1, 1:, tts.delay_steps :]  # [1, n_q, T]: audio frame j is text step j
    end = result.end_steps[item]
    frames = codes.shape[-1] if end is None else min(codes.shape[-1], end + delay)
    codes = codes[..., :frames]
    weight = next(mimi.parameters())
    pcm = mimi.decode(codes.clamp(min=0).to(weight.device)).float().cpu()[0]  # [1, frames * frame_size]
    whole = (codes >= 0).all(dim=1)[0]  # [frames]: frames with every codebook written
    pcm = (pcm.view(1, frames, -1) * whole.view(1, -1, 1)).reshape(1, -1)
    duration = pcm.shape[-1] / mimi.sample_rate
    words = []
    steps = result.words[item]
    for i, (text, step, speaker) in enumerate(steps):
        start = min(step / tts.frame_rate, duration)
        stop = steps[i + 1][1] / tts.frame_rate if i + 1 < len(steps) else (end if end is not None else frames) / tts.frame_rate
        words.append((text, start, max(start, min(stop, duration)), speaker))
    return Speech(pcm, words)
