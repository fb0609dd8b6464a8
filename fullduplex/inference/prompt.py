"""Persona prompts (NVIDIA PersonaPlex): the frames forced before the first user frame.

A persona is a voice prompt and a text role prompt. Before the conversation the generator is stepped through a
fixed schedule of frames whose every stream is given (``docs/personas.md``; personaplex.md section 2)::

    phase    frames                 text (row 0)                  model audio (1..8)   user audio (9..16)
    voice    N (the voice's frames)  PAD                           the voice's codes    SINE
    silence  6                      PAD                           SILENCE              SINE
    text     one per text token     "<system> {role} <system>"    SILENCE              SINE
    silence  6                      PAD                           SILENCE              SINE

``SILENCE`` and ``SINE`` are fixed Mimi codes (silence, and a 440 Hz sine at amplitude 0.5). An empty role prompt
has no text frames; no voice, no voice frames. As in the reference, step 0's frame is never seen by the model (the
first voice frame is lost). :func:`build_schedule` is pure; :func:`step_inputs` turns a schedule into what
:meth:`~fullduplex.inference.Generator.step` takes at each prompt step::

    schedule = build_schedule(lm.config, voice, role_tokens(tokenizer, "You are a helpful barista."))
    with gen.streaming(1):
        run_prompt(gen, schedule)            # len(schedule) steps, outputs discarded
        ... gen.step(user_frame) ...         # the conversation
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..lm.config import LMConfig
from ..text.tokenizer import TextTokenizer

SILENCE_CODES = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)  # the released Mimi's codes of silence
SINE_CODES = (430, 1268, 381, 1611, 1095, 1495, 56, 472)  # ... of a 440 Hz sine at amplitude 0.5
SILENCE_FRAMES = 6  # int(0.5 s x 12.5 frames/s) between the phases
SYSTEM_TAG = "<system>"  # plain text for the tokenizer; the closing tag is the same


@dataclass(frozen=True)
class FillerCodes:
    """The Mimi codes [8] of a silent frame (the model's channel between phases) and of the 440 Hz sine (the
    user's channel throughout the prompt). :data:`RELEASED_FILLER` for the released Mimi;
    :func:`~fullduplex.inference.voice.filler_codes` derives them for any Mimi."""

    silence: tuple[int, ...] = SILENCE_CODES
    sine: tuple[int, ...] = SINE_CODES


RELEASED_FILLER = FillerCodes()


@dataclass(frozen=True)
class Voice:
    """A voice prompt: the model's audio codes ``codes`` [own_q, N] (a WAV encoded by Mimi, or our voice file), or a
    released PersonaPlex ``.pt`` voice: ``embeddings`` [N - 1, dim] (the Temporal Transformer's summed input
    embeddings of steps 0 .. N - 2) and ``tail`` [K, 2] (every stream's tokens of frames N - 2 and N - 1: what the
    steps after the replayed ones read)."""

    name: str
    codes: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.codes is None) == (self.embeddings is None):
            raise ValueError(f"voice {self.name}: give either codes or embeddings (with tail)")
        if self.embeddings is not None and (self.tail is None or self.tail.shape[-1] != 2):
            raise ValueError(f"voice {self.name}: embeddings need the [K, 2] tokens of the last two frames")

    @property
    def frames(self) -> int:
        return self.codes.shape[-1] if self.codes is not None else self.embeddings.shape[0] + 1


@dataclass(frozen=True)
class Schedule:
    """The forced frames of a persona prompt. ``tokens`` [K, T]: every stream of every frame, undelayed (row 0 text,
    then the model's codebooks, then the user's). ``embeddings`` [T, dim] with ``embedded`` [T] (bool): frames whose
    step feeds these input embeddings instead of embedding its tokens (released voices). ``phases``: (name, first
    frame, end frame) in order."""

    tokens: torch.Tensor
    embedded: torch.Tensor
    embeddings: torch.Tensor | None = None
    phases: tuple[tuple[str, int, int], ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return self.tokens.shape[-1]


def wrap_system_tags(text: str) -> str:
    """``"<system> {text} <system>"`` (stripped), unless ``text`` already starts and ends with the tag."""
    text = text.strip()
    if text.startswith(SYSTEM_TAG) and text.endswith(SYSTEM_TAG) and len(text) >= 2 * len(SYSTEM_TAG):
        return text
    return f"{SYSTEM_TAG} {text} {SYSTEM_TAG}"


def role_tokens(tokenizer: TextTokenizer, text: str | None) -> list[int]:
    """The text phase's tokens of a role prompt; [] for an empty or missing one (no text frames)."""
    if text is None or not text.strip():
        return []
    return tokenizer.encode(wrap_system_tags(text))


def build_schedule(
    config: LMConfig,
    voice: Voice | None,
    text_tokens: Sequence[int],
    filler: FillerCodes = RELEASED_FILLER,
    silence_frames: int = SILENCE_FRAMES,
) -> Schedule:
    """The prompt's frames (see the module docstring): voice, silence, text, silence. Pure: no model runs."""
    K, own = config.num_streams, config.own_q
    if len(filler.silence) < own or len(filler.sine) < config.user_q:
        raise ValueError(f"filler codes hold {len(filler.silence)}/{len(filler.sine)} codebooks; the LM needs {own}/{config.user_q}")
    n_voice = voice.frames if voice is not None else 0
    n_text = len(text_tokens)
    T = n_voice + 2 * silence_frames + n_text
    tokens = torch.empty(K, T, dtype=torch.long)
    tokens[0] = config.text_pad_id
    tokens[1 : 1 + own] = torch.tensor(filler.silence[:own])[:, None]
    tokens[1 + own :] = torch.tensor(filler.sine[: config.user_q])[:, None]
    embedded = torch.zeros(T, dtype=torch.bool)
    embeddings = None
    if voice is not None and voice.codes is not None:
        if voice.codes.shape[0] < own:
            raise ValueError(f"voice {voice.name} has {voice.codes.shape[0]} codebooks; the LM speaks {own}")
        tokens[1 : 1 + own, :n_voice] = voice.codes[:own]
    elif voice is not None:  # a released voice: replayed embeddings, then the saved tokens of its last two frames
        tokens[1 : 1 + own, :n_voice] = config.audio_initial_id
        tokens[:, n_voice - 2 : n_voice] = voice.tail
        embedded[: n_voice - 1] = True
        embeddings = torch.zeros(T, voice.embeddings.shape[-1], dtype=voice.embeddings.dtype)
        embeddings[: n_voice - 1] = voice.embeddings
    start = n_voice + silence_frames
    if n_text:
        tokens[0, start : start + n_text] = torch.tensor(list(text_tokens), dtype=torch.long)
    phases = (("voice", 0, n_voice), ("silence", n_voice, start), ("text", start, start + n_text),
              ("silence", start + n_text, T))
    return Schedule(tokens, embedded, embeddings, tuple(p for p in phases if p[2] > p[1]))


@dataclass(frozen=True)
class StepInputs:
    """What :meth:`Generator.step` takes at prompt step t (one batch item): ``user`` [user_q, T], ``force`` and
    ``force_mask`` [K, T], ``embeddings`` [T, dim] or None, ``embedded`` [T]."""

    user: torch.Tensor
    force: torch.Tensor
    force_mask: torch.Tensor
    embedded: torch.Tensor
    embeddings: torch.Tensor | None


def step_inputs(schedule: Schedule, config: LMConfig) -> StepInputs:
    """Per prompt step t: the user codes of frame t, and forced what step t samples: stream k of frame
    ``t + 1 - delays[k]`` (the next frame's text and semantic codebooks, frame t's acoustic ones) where that frame
    is part of the prompt. After the last step the semantic streams of the next frame are the model's own."""
    K, T = schedule.tokens.shape
    force = torch.zeros(K, T, dtype=torch.long)
    mask = torch.zeros(K, T, dtype=torch.bool)
    for k, delay in enumerate(config.delays):
        frames = torch.arange(T) + 1 - delay  # the frame of stream k that step t samples
        valid = (frames >= 0) & (frames < T)
        force[k, valid] = schedule.tokens[k, frames[valid]]
        mask[k] = valid
    user = schedule.tokens[1 + config.own_q :]
    return StepInputs(user, force, mask, schedule.embedded, schedule.embeddings)


def prompt_step(gen, inputs: StepInputs, t: int, items: torch.Tensor | None = None, user: torch.Tensor | None = None):
    """Step ``gen`` (streaming, batch B) once with prompt step ``t`` for the items where ``items`` [B] (bool, on
    any device; default all), ``user`` [B, >= user_q, 1] the other items' user codes. Returns the step's output."""
    state = gen.state
    B, device = state.batch_size, state.cache.device
    cfg = gen.config
    mine = torch.ones(B, dtype=torch.bool, device=device) if items is None else items.to(device)
    sine = inputs.user[:, t].to(device).view(1, -1, 1).expand(B, -1, 1)
    if user is None:
        user_codes = sine
    else:
        user_codes = torch.where(mine.view(B, 1, 1), sine, user[:, : cfg.user_q].to(device))
    force = inputs.force[:, t].to(device).view(1, -1, 1).expand(B, -1, 1)
    force_mask = inputs.force_mask[:, t].to(device).view(1, -1, 1) & mine.view(B, 1, 1)
    embeddings = embeddings_mask = None
    if inputs.embeddings is not None and bool(inputs.embedded[t]):  # host-side flag of the schedule
        embeddings = inputs.embeddings[t].to(device).view(1, 1, -1).expand(B, 1, -1)
        embeddings_mask = mine
    return gen.step(user_codes, force, force_mask, embeddings, embeddings_mask)


def run_prompt(gen, schedule: Schedule, steps: int | None = None) -> None:
    """Step every item of ``gen`` through the first ``steps`` (default all) frames of ``schedule``; the outputs
    are discarded."""
    inputs = step_inputs(schedule, gen.config)
    for t in range(len(schedule) if steps is None else steps):
        prompt_step(gen, inputs, t)
