"""Many conversations at once: one batched Mimi + LM step per 80 ms frame for every live session.

The engine owns Mimi, the LM's generator and a fixed number of batch slots. Each :meth:`Engine.step` takes one
1920-sample frame from every session (silence for a session that has not sent a whole frame yet, counted as an
underrun), encodes all slots together, steps the generator once, decodes, and gives each session one frame of the
model's audio and its text token. A session joining or leaving resets only its own slot::

    with Engine(mimi, lm, max_sessions=8) as engine:
        session = engine.open()                 # EngineFull when every slot is taken
        session.push(pcm)                       # float32 [S] at 24 kHz, any length
        engine.step()                           # typically every 80 ms, driven by the server's clock
        for frame in session.pop_outputs(): ... # FrameOutput: pcm [1920], text token (or None), tokens
        engine.close(session)

A session sees exactly what ``fullduplex generate`` computes for the same audio (greedy; with sampling the draws
depend on which sessions share the steps): its slot starts fresh when it joins, the first frame it sends is never
seen by the model, and its first output frame is silence.

Personas (``engine.open(persona)``, see ``persona.py``): a persona in the engine's :class:`PersonaCache` starts at
once (``session.live``); otherwise its prompt runs in the session's own slot, one frame per step alongside the
others, and is cached. When the session's first whole frame of audio arrives, the cached state is copied into its
slot and the prompt's last frame is stepped; the user's audio follows from the next step, and its first output
frame is already the model's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from ..codec.mimi import Mimi
from ..errors import FullduplexError
from ..lm.model import LMModel
from ..nn.paged_kv import PagedKV
from .generator import Generator
from .offline import Sampling, user_codebooks
from .persona import Persona, PersonaCache, PersonaState, restore, snapshot


class EngineFull(FullduplexError):
    """Every batch slot holds a live session."""


@dataclass
class FrameOutput:
    """One 80 ms frame for a session: the model's audio ``pcm`` [1920] (float32, CPU; silence until the model's
    first frame), its text token (None until then) and all its tokens [1 + own_q] (-2 until then)."""

    pcm: torch.Tensor
    text: int | None
    tokens: torch.Tensor


@dataclass(eq=False)
class Session:
    """A conversation in slot ``slot``; created by :meth:`Engine.open`."""

    slot: int
    frame_size: int
    frames: int = 0  # engine steps taken since the session joined
    underruns: int = 0  # steps that found less than a frame of input and used silence
    closed: bool = False
    persona: Persona | None = None
    persona_state: PersonaState | None = None  # the persona's state, ready to copy into the slot
    prompt_step: int = 0  # prompt frames stepped in the slot so far (a persona not in the cache)
    joined: bool = False  # the slot holds this conversation
    _pending: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    _outputs: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # push/pop from one thread, steps from another

    def push(self, pcm: torch.Tensor) -> None:
        """Queue the user's audio: float32 [S] at 24 kHz, any length."""
        if self.closed:
            raise FullduplexError("this session is closed")
        pcm = pcm.detach().to("cpu", torch.float32).reshape(-1)
        with self._lock:
            self._pending = torch.cat([self._pending, pcm])

    @property
    def buffered(self) -> int:
        """Samples received and not yet stepped."""
        return self._pending.shape[0]

    @property
    def started(self) -> bool:
        """Stepped at least once. A session joins the steps with its first whole frame of input, so a client that
        connects takes part from its first frame, not from whatever step happens to come first."""
        return self.frames > 0 or self.buffered >= self.frame_size

    @property
    def prompting(self) -> bool:
        """Its persona prompt is still running in its slot (no handshake yet)."""
        return self.persona is not None and self.persona_state is None

    @property
    def live(self) -> bool:
        """Ready for the user's audio (the server sends the handshake)."""
        return not self.prompting

    def pop_outputs(self) -> list[FrameOutput]:
        """Frames produced since the last call, oldest first."""
        with self._lock:
            out = list(self._outputs)
            self._outputs.clear()
        return out

    def _take_frame(self) -> torch.Tensor:
        with self._lock:
            if self.buffered >= self.frame_size:
                frame, self._pending = self._pending[: self.frame_size], self._pending[self.frame_size :]
                return frame
        self.underruns += 1
        return torch.zeros(self.frame_size)

    def _deliver(self, output: FrameOutput) -> None:
        with self._lock:
            self._outputs.append(output)
        self.frames += 1


class Engine:
    """Batched streaming engine (see the module docstring). Use as a context manager, or :meth:`start` /
    :meth:`stop`. Not thread-safe: call it from one thread (the server's model loop)."""

    def __init__(
        self, mimi: Mimi, lm: LMModel, sampling: Sampling | None = None, max_sessions: int = 8,
        personas: PersonaCache | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        sampling = sampling or Sampling()
        self.mimi, self.lm, self.max_sessions = mimi, lm, max_sessions
        self.mimi.num_codebooks = user_codebooks(lm)
        self.generator = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, sampling.seed)
        self.device = next(mimi.parameters()).device
        self.sessions: list[Session | None] = [None] * max_sessions
        self.step_times: deque[float] = deque(maxlen=1000)  # seconds per step, most recent last
        self.steps = 0
        self.personas = personas if personas is not None else PersonaCache()
        self._stack: ExitStack | None = None
        self._lock = threading.RLock()  # open/close (event loop) against step (a worker thread)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._stack is None:
            stack = ExitStack()
            stack.enter_context(self.mimi.streaming(self.max_sessions))
            stack.enter_context(self.generator.streaming(self.max_sessions))
            self._stack = stack
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        self.sessions = [None] * self.max_sessions

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sessions -----------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return sum(s is not None for s in self.sessions)

    def open(self, persona: Persona | None = None) -> Session:
        """A new session in a free slot, with ``persona`` (see the module docstring); :class:`EngineFull` when
        there is none."""
        if self._stack is None:
            raise FullduplexError("the engine is not started")
        with self._lock:
            for slot, current in enumerate(self.sessions):
                if current is None:
                    session = Session(slot, self.mimi.frame_size, persona=persona)
                    if persona is not None:
                        session.persona_state = self.personas.get(persona.key)
                    self.sessions[slot] = session
                    return session
        slots = "its one conversation slot is" if self.max_sessions == 1 else f"all {self.max_sessions} conversation slots are"
        raise EngineFull(f"{slots} busy; try again later")

    def close(self, session: Session) -> None:
        """Free the session's slot (its state is reset when the next session takes it)."""
        session.closed = True
        with self._lock:
            if self.sessions[session.slot] is session:
                self.sessions[session.slot] = None

    # --- the step -----------------------------------------------------------------------------------------
    def step(self) -> None:
        """One 80 ms frame for every started session. Other slots run on silence and their output is dropped."""
        with self._lock:
            self._step()

    @torch.inference_mode()
    def _step(self) -> None:
        start = time.perf_counter()
        sessions = [s if s is not None and (s.started or s.prompting) else None for s in self.sessions]
        # Host-side flags, no device sync. A persona session joins with its prompt's last frame and takes the
        # user's audio from the next step (then its codec starts afresh); others join with their first frame.
        prompt = [s is not None and s.prompting for s in sessions]
        join = [s is not None and s.live and not s.joined and s.persona is not None for s in sessions]
        fresh = [s is not None and s.live and not s.joined and s.persona is None for s in sessions]
        codec_fresh = torch.tensor([f or (s is not None and s.persona is not None and s.joined and s.frames == 0)
                                    for f, s in zip(fresh, sessions, strict=True)])
        gen_fresh = torch.tensor([f or (p and s.prompt_step == 0) for f, p, s in zip(fresh, prompt, sessions, strict=True)])
        if bool(codec_fresh.any()):
            self.mimi.reset(codec_fresh.to(self.device))
        if bool(gen_fresh.any()):
            self.generator.reset(gen_fresh.to(self.device))
        kv = self.lm.transformer.state
        if isinstance(kv, PagedKV):  # empty slots hold no KV pages
            kv.set_active(torch.tensor([s is not None for s in sessions]).to(self.device))
        forced = {}
        for slot, session in enumerate(sessions):
            if prompt[slot]:
                forced[slot] = (session.persona, session.prompt_step)
            elif join[slot]:
                restore(self.generator, slot, session.persona_state)
                forced[slot] = (session.persona, session.persona.frames - 1)
        consume = [s is not None and not prompt[slot] and not join[slot] for slot, s in enumerate(sessions)]
        silence_in = torch.zeros(self.mimi.frame_size)
        frames = torch.stack([s._take_frame() if take else silence_in for s, take in zip(sessions, consume, strict=True)])
        weight = next(self.mimi.parameters())
        codes = self.mimi.encode(frames[:, None].to(weight.device, weight.dtype))  # [N, K, 1]
        out = self.generator.step(codes, *self._forcing(forced, codes))
        for slot, session in enumerate(sessions):
            if prompt[slot]:
                session.prompt_step += 1
                if session.prompt_step == session.persona.frames - 1:  # all but the last frame: cache it
                    session.persona_state = snapshot(self.generator, slot)
                    self.personas.put(session.persona.key, session.persona_state)
            elif join[slot] or fresh[slot]:
                session.joined = True
        delay = self.lm.config.max_delay
        # A session's tokens are valid from its (max_delay + 1)-th step (its first with a persona); that step starts
        # its decoder afresh.
        valid_from = [0 if s is not None and s.persona is not None else delay for s in sessions]
        ready = [s is not None and take and s.frames >= v for s, take, v in zip(sessions, consume, valid_from, strict=True)]
        first = torch.tensor([r and s.frames == v for r, s, v in zip(ready, sessions, valid_from, strict=True)])
        pcm = None
        if out is not None and any(ready):
            if bool(first.any()):
                for part in (self.mimi.upsample, self.mimi.decoder_transformer, self.mimi.decoder):
                    part.reset(first.to(self.device))
            pcm = self.mimi.decode(out[:, 1:].clamp(min=0))[:, 0].float().cpu()  # [N, 1920]
            out = out[:, :, 0].cpu()  # [N, 1 + own_q]
        silence = torch.zeros(self.mimi.frame_size)
        missing = torch.full((1 + self.lm.config.own_q,), -2, dtype=torch.long)
        for slot, session in enumerate(sessions):
            if session is None or not consume[slot]:
                continue
            if ready[slot] and pcm is not None:
                session._deliver(FrameOutput(pcm[slot], int(out[slot, 0]), out[slot]))
            else:
                session._deliver(FrameOutput(silence, None, missing))
        self.steps += 1
        self.step_times.append(time.perf_counter() - start)

    def _forcing(self, forced: dict[int, tuple[Persona, int]], codes: torch.Tensor) -> tuple:
        """(force, force_mask, embeddings, embeddings_mask) for :meth:`Generator.step`: slot -> (persona, prompt
        step) forced, the user's codes of those slots replaced by the prompt's (in ``codes``, in place)."""
        if not forced:
            return None, None, None, None
        cfg, N = self.lm.config, codes.shape[0]
        force = torch.zeros(N, cfg.num_streams, 1, dtype=torch.long)
        mask = torch.zeros(N, cfg.num_streams, 1, dtype=torch.bool)
        embeddings, use = None, torch.zeros(N, dtype=torch.bool)
        for slot, (persona, t) in forced.items():
            inputs = persona.inputs
            codes[slot, : cfg.user_q, 0] = inputs.user[:, t].to(codes.device, codes.dtype)
            force[slot, :, 0], mask[slot, :, 0] = inputs.force[:, t], inputs.force_mask[:, t]
            if inputs.embeddings is not None and bool(inputs.embedded[t]):
                if embeddings is None:
                    embeddings = torch.zeros(N, 1, inputs.embeddings.shape[-1])
                embeddings[slot, 0], use[slot] = inputs.embeddings[t], True
        device = codes.device
        if embeddings is None:
            return force.to(device), mask.to(device), None, None
        return force.to(device), mask.to(device), embeddings.to(device), use.to(device)
