"""Many conversations at once: one batched Mimi + LM step per 80 ms frame for every live session.

The engine owns Mimi, the LM's generator and a fixed number of session slots. Each :meth:`Engine.step` takes one
1920-sample frame from every session (silence for a session that has not sent a whole frame yet, counted as an
underrun), encodes the sessions together, steps the generator once, decodes, and gives each session one frame of
the model's audio and its text token::

    with Engine(mimi, lm, max_sessions=8) as engine:
        session = engine.open()                 # EngineFull when every slot is taken
        session.push(pcm)                       # float32 [S] at 24 kHz, any length
        engine.step()                           # typically every 80 ms, driven by the server's clock
        for frame in session.pop_outputs(): ... # FrameOutput: pcm [1920], text token (or None), tokens
        engine.close(session)

A speech-to-text model (``dep_q = 0``, Kyutai STT) runs the same way: its sessions get the text token and
silent ``pcm`` (the server sends them no audio).

A session sees exactly what ``fullduplex generate`` computes for the same audio (greedy; with sampling the draws
depend on which sessions share the steps): its row starts fresh when it joins, the first frame it sends is never
seen by the model, and its first output frame is silence.

Only occupied slots cost compute. The sessions that take part in the steps hold the leading rows ``0 .. n-1`` of
the streaming state (allocated once for ``max_sessions``); a session that leaves from the middle has the last row
copied into its hole (``copy_item``), and each step runs Mimi and the generator on the first n rows only
(``rows(n)``: views, no copy). On CUDA the step runs on the smallest bucket >= n (1, 2, 4, 8, 16, 32, then
multiples of 16), so each bucket's CUDA graphs are captured once; the rows past n run silence and are reset when a
session takes them. A session's life (:class:`SlotState`): WAITING (no row; until its first whole frame, or
until the cached persona it waits for), PROMPTING (its persona's prompt runs in its row, one frame per step),
JOINING (one step: the cached persona state is restored into its row and the prompt's last frame stepped), LIVE,
CLOSING (left; its row is released at the next step), FREE.

Personas (``engine.open(persona)``, see ``persona.py``): a persona in the engine's :class:`PersonaCache` starts at
once (``session.live``); otherwise its prompt runs in a row of its own, one frame per step alongside the others,
and is cached (the row is released until the session's audio arrives). When the session's first whole frame of
audio arrives, the cached state is restored into its row and the prompt's last frame is stepped; the user's audio
follows from the next step, and its first output frame is already the model's.
"""

from __future__ import annotations

import enum
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
from .translate import hibiki_conditions


def default_conditions(lm: LMModel, cfg_coef: float) -> tuple | None:
    """(conditions, null) a served model runs under: none for the dialogue models, Hibiki's description."""
    if lm.condition_provider is None:
        if cfg_coef != 1.0:
            raise FullduplexError(f"--cfg-coef {cfg_coef:g}: this model has no conditioning for classifier-free "
                                  "guidance (only conditioned models such as Hibiki); leave --cfg-coef at 1.0")
        return None
    if lm.config.model_type == "hibiki":
        return hibiki_conditions(cfg_coef)
    raise FullduplexError(f"a {lm.config.model_type!r} model with conditioners {lm.condition_provider.names} cannot be "
                          "served as a conversation (serve takes dialogue and Hibiki models)")


class EngineFull(FullduplexError):
    """Every batch slot holds a live session."""


@dataclass
class FrameOutput:
    """One 80 ms frame for a session: the model's audio ``pcm`` [1920] (float32, CPU; silence until the model's
    first frame), its text token (None until then) and all its tokens [1 + own_q] (-2 until then)."""

    pcm: torch.Tensor
    text: int | None
    tokens: torch.Tensor


class SlotState(enum.Enum):
    """Where a session is in its life (see the module docstring)."""

    WAITING = "waiting"  # no row: waiting for its first whole frame (or for a row to run its persona's prompt)
    PROMPTING = "prompting"  # its persona's prompt runs in its row
    JOINING = "joining"  # this step restores the cached persona into its row and steps the prompt's last frame
    LIVE = "live"  # takes a frame of the user's audio each step
    CLOSING = "closing"  # closed; its row is released (compacted) at the next step
    FREE = "free"  # closed, holds nothing


ROWS = (SlotState.PROMPTING, SlotState.JOINING, SlotState.LIVE, SlotState.CLOSING)  # the states that hold a row


def bucket(n: int, limit: int) -> int:
    """The batch a step of ``n`` live rows runs on with CUDA graphs: the smallest of 1, 2, 4, 8, 16, 32, 48, 64, ...
    (multiples of 16 from 32) that is >= n, at most ``limit``."""
    size = 1
    while size < n and size < 32:
        size *= 2
    if size < n:
        size = -(-n // 16) * 16
    return min(size, limit)


@dataclass(eq=False)
class Session:
    """A conversation in slot ``slot``; created by :meth:`Engine.open`."""

    slot: int  # its place in ``Engine.sessions`` for its whole life (not its batch row, which may move)
    frame_size: int
    frames: int = 0  # engine steps taken since the session joined
    underruns: int = 0  # steps that found less than a frame of input and used silence
    closed: bool = False
    persona: Persona | None = None
    persona_state: PersonaState | None = None  # the persona's state, ready to copy into a row
    prompt_step: int = 0  # prompt frames stepped in its row so far (a persona not in the cache)
    state: SlotState = SlotState.WAITING
    row: int | None = None  # its row of the streaming state while it holds one
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

    @property
    def joined(self) -> bool:
        """The conversation runs in its row (its persona, if any, restored)."""
        return self.state in (SlotState.LIVE, SlotState.CLOSING) and self.row is not None

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
        personas: PersonaCache | None = None, cfg_coef: float = 1.0, conditions: tuple | None = None,
    ) -> None:
        """``conditions``: (conditions, null conditions) every session runs under, for models with conditioners
        (default for Hibiki: its "very_good" description, contrasted with "very_bad" when ``cfg_coef != 1``)."""
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        sampling = sampling or Sampling()
        self.mimi, self.lm, self.max_sessions = mimi, lm, max_sessions
        self.mimi.num_codebooks = user_codebooks(lm)
        self.conditions = conditions if conditions is not None else default_conditions(lm, cfg_coef)
        self.generator = Generator(lm, sampling.temp, sampling.temp_text, sampling.top_k, sampling.top_k_text, sampling.seed,
                                   cfg_coef=cfg_coef)
        self.device = next(mimi.parameters()).device
        self.sessions: list[Session | None] = [None] * max_sessions
        self.step_times: deque[float] = deque(maxlen=1000)  # seconds per step, most recent last
        self.steps = 0
        self.personas = personas if personas is not None else PersonaCache()
        self.buckets = self.device.type == "cuda"  # step a bucket of rows (CUDA graphs per bucket) or exactly n
        self._rows: list[Session] = []  # the sessions holding rows 0 .. n-1, in row order
        self._stack: ExitStack | None = None
        self._lock = threading.RLock()  # open/close (event loop) against step (a worker thread)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._stack is None:
            stack = ExitStack()
            stack.enter_context(self.mimi.streaming(self.max_sessions))
            stack.enter_context(self.generator.streaming(self.max_sessions))
            if self.conditions is not None:  # the same for every row: resets and compaction keep them
                for row in range(self.max_sessions):
                    self.generator.set_conditions(row, *self.conditions)
            self._stack = stack
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        for session in self.sessions:
            if session is not None:
                session.closed, session.state, session.row = True, SlotState.FREE, None
        self.sessions = [None] * self.max_sessions
        self._rows = []

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sessions -----------------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return sum(s is not None for s in self.sessions)

    @property
    def rows(self) -> int:
        """Rows the next step computes for (before buckets): sessions that take part in the steps."""
        return len(self._rows)

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
        """Free the session's slot; its row (if any) is released at the next step."""
        session.closed = True
        with self._lock:
            session.state = SlotState.CLOSING if session.row is not None else SlotState.FREE
            if self.sessions[session.slot] is session:
                self.sessions[session.slot] = None

    # --- rows ---------------------------------------------------------------------------------------------
    def _release(self) -> None:
        """Give back the rows of closed sessions and of finished prompts (their state is cached): the last row
        moves into each hole (``copy_item``, no host sync), so the rows in use stay the leading ones."""
        leaving = [s.row for s in self._rows if s.state in (SlotState.CLOSING, SlotState.WAITING)]
        for row in sorted(leaving, reverse=True):  # highest first, so the last row is never one that leaves
            session, last = self._rows[row], len(self._rows) - 1
            if row != last:
                self.mimi.copy_item(last, row)
                self.generator.copy_item(last, row)
                self._rows[row] = self._rows[last]
                self._rows[row].row = row
            self._rows.pop()
            session.row = None
            if session.state is SlotState.CLOSING:
                session.state = SlotState.FREE

    def _admit(self) -> None:
        """Give rows to waiting sessions that take part from this step (slot order)."""
        for session in self.sessions:
            if session is None or session.state is not SlotState.WAITING:
                continue
            if session.prompting:
                session.state = SlotState.PROMPTING
            elif session.buffered >= session.frame_size:
                session.state = SlotState.JOINING if session.persona is not None else SlotState.LIVE
            else:
                continue
            session.row = len(self._rows)
            self._rows.append(session)

    # --- the step -----------------------------------------------------------------------------------------
    def step(self) -> None:
        """One 80 ms frame for every session that takes part. Free rows cost nothing (see the module docstring)."""
        with self._lock:
            self._step()

    @torch.inference_mode()
    def _step(self) -> None:
        start = time.perf_counter()
        self._release()
        self._admit()
        rows = list(self._rows)
        n = len(rows)
        if n:
            for session in rows:  # a persona joins: its cached state goes into its row
                if session.state is SlotState.JOINING:
                    restore(self.generator, session.row, session.persona_state)
            size = bucket(n, self.max_sessions) if self.buckets else n
            kv = self.lm.transformer.state
            if isinstance(kv, PagedKV):  # rows without a session (past the leading n) hold no KV pages
                active = torch.arange(self.max_sessions) < n
                if self.generator.cfg:  # two LM rows per session under classifier-free guidance
                    active = active.repeat_interleave(2)
                kv.set_active(active.to(self.device))
            with ExitStack() as stack:
                if size < self.max_sessions:
                    stack.enter_context(self.mimi.rows(size))
                    stack.enter_context(self.generator.rows(size))
                self._step_rows(rows, size)
        self.steps += 1
        self.step_times.append(time.perf_counter() - start)

    def _step_rows(self, rows: list[Session], size: int) -> None:
        """The model's step on the first ``size`` rows; ``rows`` [n <= size] their sessions."""
        LIVE, PROMPTING, JOINING = SlotState.LIVE, SlotState.PROMPTING, SlotState.JOINING
        pad = [False] * (size - len(rows))
        # Host-side flags per row, no device sync. A row starts fresh when its session takes its first frame
        # (codec; the generator too without a persona) or starts its prompt (generator).
        codec_fresh = torch.tensor([s.state is LIVE and s.frames == 0 for s in rows] + pad)
        gen_fresh = torch.tensor([(s.state is LIVE and s.frames == 0 and s.persona is None)
                                  or (s.state is PROMPTING and s.prompt_step == 0) for s in rows] + pad)
        if bool(codec_fresh.any()):
            self.mimi.reset(codec_fresh.to(self.device))
        if bool(gen_fresh.any()):
            self.generator.reset(gen_fresh.to(self.device))
        forced = {}
        for row, session in enumerate(rows):
            if session.state is PROMPTING:
                forced[row] = (session.persona, session.prompt_step)
            elif session.state is JOINING:
                forced[row] = (session.persona, session.persona.frames - 1)
        silence_in = torch.zeros(self.mimi.frame_size)
        frames = torch.stack([s._take_frame() if s.state is LIVE else silence_in for s in rows]
                             + [silence_in] * len(pad))
        weight = next(self.mimi.parameters())
        codes = self.mimi.encode(frames[:, None].to(weight.device, weight.dtype))  # [size, K, 1]
        out = self.generator.step(codes, *self._forcing(forced, codes))
        delay = self.lm.config.max_delay
        # A session's tokens are valid from its (max_delay + 1)-th step (its first with a persona); that step
        # starts its decoder afresh.
        valid_from = [0 if s.persona is not None else delay for s in rows]
        ready = [s.state is LIVE and s.frames >= v for s, v in zip(rows, valid_from, strict=True)]
        first = torch.tensor([r and s.frames == v for r, s, v in zip(ready, rows, valid_from, strict=True)] + pad)
        pcm = None
        if out is not None and any(ready):
            if not self.lm.config.own_q:  # speech to text: the model writes, it does not speak
                pcm = torch.zeros(size, self.mimi.frame_size)
            else:
                if bool(first.any()):
                    for part in (self.mimi.upsample, self.mimi.decoder_transformer, self.mimi.decoder):
                        part.reset(first.to(self.device))
                pcm = self.mimi.decode(out[:, 1:].clamp(min=0))[:, 0].float().cpu()  # [size, 1920]
            out = out[:, :, 0].cpu()  # [size, 1 + own_q]
        silence = torch.zeros(self.mimi.frame_size)
        missing = torch.full((1 + self.lm.config.own_q,), -2, dtype=torch.long)
        for row, session in enumerate(rows):
            if session.state is PROMPTING:
                session.prompt_step += 1
                if session.prompt_step == session.persona.frames - 1:  # all but the last frame: cache it
                    session.persona_state = snapshot(self.generator, row)
                    self.personas.put(session.persona.key, session.persona_state)
                    session.state = SlotState.WAITING  # its row is released at the next step, until its audio
            elif session.state is JOINING:
                session.state = LIVE
            elif session.state is LIVE:
                if ready[row] and pcm is not None:
                    session._deliver(FrameOutput(pcm[row], int(out[row, 0]), out[row]))
                else:
                    session._deliver(FrameOutput(silence, None, missing))

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
