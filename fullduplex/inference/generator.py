"""Streaming generation: one Temporal step and dep_q Depth steps per 80 ms frame.

Per frame the generator takes the user's codes, feeds the model the delayed streams (text, the model's own
codebooks, the user's codebooks), samples the model's text token and then its audio codebooks one by one, and
returns them once the acoustic delay has passed::

    gen = fd.Generator(lm, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25, seed=42)
    with gen.streaming(batch_size=1):
        for user_frame in user_codes.split(1, dim=-1):      # [B, 8, 1] each
            tokens = gen.step(user_frame)                    # None for the first frame(s), then [B, 9, 1]

Rules shared with the reference generator: a ring of ``max_delay + 2`` columns holds every stream; stream k is
read ``delays[k]`` frames after it was written; while a stream has not been written yet the model sees its
initial token (``text_card`` / ``card``), so the first user frame is never seen; the output lags one frame and
the first call returns None. Items of the batch are independent: ``gen.reset(mask)`` restarts chosen items.

Forcing: ``gen.step(user, force=tokens, force_mask=mask)`` (both [B, K, 1], K = 1 + n_q) replaces what the step
produces: wherever ``mask[b, k]`` is True, item b's stream k takes ``tokens[b, k]`` instead of its sample, in the
column the step samples (the next frame's text and semantic codebooks, this frame's acoustic codebooks: stream k
of frame ``f + 1 - delays[k]`` when the user codes are frame f). The Depth Transformer takes forced tokens as the
inputs of its next steps, so step-by-step logits equal teacher-forced logits on the forced sequence. ``embeddings`` [B, 1, dim] with ``embeddings_mask`` [B] replaces the
Temporal Transformer's input (the summed stream embeddings) of chosen items (released PersonaPlex voices store
these). Everything stays on the device: no host sync, and CUDA graphs still apply. With ``dep_q > own_q``
(PersonaPlex) the Depth Transformer samples all dep_q codebooks, the user's included; the output holds the text
and the model's own ``own_q`` codebooks.

Speech-to-text (``dep_q = 0``, Kyutai STT): there is no Depth Transformer; all n_q audio streams are the user's
and each step returns the text token only ([B, 1, 1]). :meth:`Generator.step_with_extra_heads` also returns the
extra heads' probabilities for the step (the STT 1B's voice-activity head), as the reference's
``LMGen.step_with_extra_heads``.
Conditions (Hibiki's ``description``, Kyutai TTS's voices and ``cfg`` / ``control``): ``gen.set_conditions(item,
conditions, null)`` once per item after it (re)starts, outside the per-frame step (see
:mod:`~fullduplex.lm.conditioners`); until then an item has every lookup-table condition absent. Classifier-free
guidance (``cfg_coef != 1``): the LM runs two rows per item, the item's conditions and its ``null`` ones
(Hibiki: "very_bad"; TTS: everything dropped), and samples from ``null + cfg_coef * (cond - null)`` logits, text
and audio; with ``cfg_no_text`` the null row sees no text (zero tokens) and the text is sampled from the
conditioned logits alone (Kyutai TTS). ``text_hook`` (step argument) may replace the sampled text tokens before
the Depth Transformer reads them (the TTS state machine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..lm.conditioners import Conditions
from ..lm.model import UNGENERATED_TOKEN, ZERO_TOKEN, LMModel
from ..nn.cuda_graph import GraphedStep
from ..nn.streaming import StreamingModule, StreamingState, masked_zero_
from .sampling import sample_token


@dataclass
class GeneratorState(StreamingState):
    cache: torch.Tensor  # [B, K, max_delay + 2] tokens by stream and (frame mod columns)
    given: torch.Tensor  # [B, K, max_delay + 2] bool: the cached token was given (user codes, forced), not sampled
    offsets: torch.Tensor  # [B] frames stepped, per item
    steps: int  # frames stepped since the streaming block began (host side, for the first-output rule)
    depth_cache: torch.Tensor  # [L, 2, B * C, H, dep_q, d] keys/values of the Depth Transformer, per frame
    graphs: dict = field(default_factory=dict)  # on CUDA: the temporal and depth steps as CUDA graphs, by batch
    hidden: torch.Tensor | None = None  # [B, 1, dim] the last step's Temporal output (for the extra heads)
    # Conditions, C = 2 rows per item with classifier-free guidance (conditioned, null), else 1:
    condition_sum: torch.Tensor | None = None  # [B, C, 1, dim] added to every frame's input
    cross_kv: torch.Tensor | None = None  # [B, C, L, 2, H, Tc, d] keys/values of the cross-attention
    rows_per_item: int = 1  # C
    # The depth cache is scratch within a frame (each frame writes its slots before reading them): an item's
    # state is its token ring, flags, offset and conditions.

    @property
    def item_tensors(self) -> tuple[str, ...]:
        return ("cache", "given", "offsets") + tuple(
            name for name in ("condition_sum", "cross_kv") if getattr(self, name) is not None
        )

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.cache, mask, UNGENERATED_TOKEN)
        masked_zero_(self.given, mask, False)
        masked_zero_(self.offsets, mask)

    def prefix(self, n: int) -> GeneratorState:
        view = super().prefix(n)
        view.depth_cache = self.depth_cache[:, :, : n * self.rows_per_item]
        return view

    def absorb(self, view: StreamingState) -> None:
        self.steps = view.steps


class Generator(StreamingModule):
    """Sampling generator over an :class:`~fullduplex.lm.LMModel` (see the module docstring).

    ``temp`` / ``top_k`` apply to audio, ``temp_text`` / ``top_k_text`` to text; temperature 0 is greedy.
    ``seed`` makes sampling reproducible: on CPU with its own ``torch.Generator``; on CUDA it seeds the device's
    default generator when streaming starts (graph replays draw from it). None uses torch's global generator.
    On CUDA the temporal step and the depth step replay from CUDA graphs (``cuda_graphs = False`` turns it off).
    """

    def __init__(
        self,
        lm: LMModel,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        seed: int | None = None,
        cfg_coef: float = 1.0,
        cfg_no_text: bool = False,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.temp, self.temp_text, self.top_k, self.top_k_text = temp, temp_text, top_k, top_k_text
        self.seed = seed
        self.cfg_coef, self.cfg_no_text = float(cfg_coef), cfg_no_text
        self.cfg = self.cfg_coef != 1.0  # two LM rows per item (see the module docstring)
        self.cuda_graphs = True
        self._rng: torch.Generator | None = None
        cfg = lm.config
        self.register_buffer("delays", torch.tensor(cfg.delays, dtype=torch.long), persistent=False)
        self.register_buffer("initial", lm.initial_tokens(), persistent=False)

    @property
    def config(self):
        return self.lm.config

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> GeneratorState:
        cfg = self.config
        self.delays, self.initial = self.delays.to(device), self.initial.to(device)
        self._rng = None
        if self.seed is not None and device.type == "cuda":
            torch.cuda.manual_seed(self.seed)
        elif self.seed is not None:
            self._rng = torch.Generator(device=device).manual_seed(self.seed)
        cache = torch.full((batch_size, cfg.num_streams, cfg.max_delay + 2), UNGENERATED_TOKEN, dtype=torch.long, device=device)
        offsets = torch.zeros(batch_size, dtype=torch.long, device=device)
        rows = 2 if self.cfg else 1
        if self.lm.depformer is not None:
            depth_cache = self.lm.depformer.new_cache(batch_size * rows, device, dtype)
        else:  # speech-to-text: no Depth Transformer
            depth_cache = torch.zeros(0, 2, batch_size * rows, 0, 0, 0, device=device, dtype=dtype)
        given = torch.zeros(cache.shape, dtype=torch.bool, device=device)
        condition_sum = cross_kv = None
        provider = self.lm.condition_provider
        if provider is not None and provider.sum_names:  # until set: every summed condition absent
            absent, _ = self.lm.fuse_conditions([{name: None for name in provider.names}])
            condition_sum = absent.to(device).view(1, 1, 1, -1).repeat(batch_size, rows, 1, 1)
        return GeneratorState(batch_size, cache, given, offsets, 0, depth_cache, condition_sum=condition_sum,
                              cross_kv=cross_kv, rows_per_item=rows)

    # --- conditions and classifier-free guidance -------------------------------------------------------------
    @torch.no_grad()
    def set_conditions(self, item: int, conditions: Conditions, null: Conditions | None = None) -> None:
        """Item ``item`` is generated under ``conditions`` (and, with classifier-free guidance, contrasted with
        ``null``). Host-side work (lookups, the cross-attention keys): call it when the item starts, not per frame."""
        state = self._streaming_state
        if state is None:
            raise RuntimeError("set_conditions needs `with generator.streaming(batch_size):`")
        if self.lm.condition_provider is None:
            raise ValueError("this model takes no conditions")
        if not 0 <= item < state.batch_size:
            raise IndexError(f"item {item} is outside the streaming batch of {state.batch_size}")
        if self.cfg and null is None:
            raise ValueError("classifier-free guidance (cfg_coef != 1) needs the null conditions of every item")
        items = [conditions, null] if self.cfg else [conditions]
        total, kv = self.lm.fuse_conditions(items)
        if total is not None:
            state.condition_sum[item].copy_(total)
        if kv is not None:
            if state.cross_kv is None:  # allocated at the first item, for the whole batch
                whole = state.parent or state
                whole.cross_kv = torch.zeros((whole.batch_size,) + tuple(kv.shape), dtype=kv.dtype, device=kv.device)
                if whole is not state:
                    state.cross_kv = whole.cross_kv[: state.batch_size]
            if kv.shape != state.cross_kv.shape[1:]:
                raise ValueError(f"conditions give {kv.shape[-2]} cross-attention positions; this batch holds {state.cross_kv.shape[-2]}")
            state.cross_kv[item].copy_(kv)

    def _streaming_modules(self) -> Iterator[StreamingModule]:
        if not self.cfg:
            yield from super()._streaming_modules()
        else:  # the LM's transformer streams on its own, two rows per item (entered by `streaming`)
            yield self

    @contextmanager
    def streaming(self, batch_size: int = 1) -> Iterator[None]:
        if not self.cfg:
            with super().streaming(batch_size):
                yield
            return
        with self.lm.transformer.streaming(2 * batch_size), super().streaming(batch_size):
            yield

    def reset(self, mask: torch.Tensor | None = None) -> None:
        super().reset(mask)
        if self.cfg:
            self.lm.transformer.reset(None if mask is None else mask.repeat_interleave(2))

    def snapshot_item(self, item: int) -> dict[str, object]:
        if not self.cfg:
            return super().snapshot_item(item)
        return {"": self._streaming_state.snapshot_item(item), "lm": [self.lm.transformer.snapshot_item(2 * item + j) for j in (0, 1)]}

    def restore_item(self, item: int, snap: dict[str, object]) -> None:
        if not self.cfg:
            return super().restore_item(item, snap)
        self._streaming_state.restore_item(item, snap[""])
        for j in (0, 1):
            self.lm.transformer.restore_item(2 * item + j, snap["lm"][j])

    def copy_item(self, src: int, dst: int) -> None:
        if not self.cfg:
            return super().copy_item(src, dst)
        self._streaming_state.copy_item(src, dst)  # not the generic walk: the LM's rows are two per item
        for j in (0, 1):
            self.lm.transformer.copy_item(2 * src + j, 2 * dst + j)

    @contextmanager
    def rows(self, n: int) -> Iterator[None]:
        if not self.cfg:
            with super().rows(n):
                yield
            return
        with self.lm.transformer.rows(2 * n), super().rows(n):
            yield

    def _mix(self, logits: torch.Tensor) -> torch.Tensor:
        """[2B, ..., V] (conditioned and null rows interleaved) → [B, ..., V] guided logits."""
        cond, null = logits[0::2], logits[1::2]
        return null + (cond - null) * self.cfg_coef

    @torch.no_grad()
    def step(
        self,
        user_codes: torch.Tensor,
        force: torch.Tensor | None = None,
        force_mask: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        embeddings_mask: torch.Tensor | None = None,
        text_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
        audio_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
        run_depth: bool = True,
    ) -> torch.Tensor | None:
        """``user_codes`` [B, >= user_q, 1] (extra codebooks are ignored) → None while the acoustic delay
        has not passed (the first call), then [B, 1 + own_q, 1]: the model's text token and audio codes for
        the frame ``max_delay`` steps back. Items stepped fewer than ``max_delay + 1`` times since their last
        reset hold :data:`~fullduplex.lm.model.UNGENERATED_TOKEN` (-2). ``force`` / ``force_mask`` [B, K, 1] and
        ``embeddings`` [B, 1, dim] / ``embeddings_mask`` [B]: see the module docstring. ``text_hook``: text
        tokens [B] → the tokens the Depth Transformer and the next frames read (host work: the TTS runtime);
        ``audio_hook``: the sampled audio codes [B, dep_q] → what the next frames read (the Depth Transformer's
        own inputs stay its samples); ``run_depth`` False: no Depth Transformer, every audio code
        :data:`~fullduplex.lm.model.ZERO_TOKEN` (frames before a TTS model's audio starts)."""
        state = self._streaming_state
        if state is None:
            raise RuntimeError("Generator.step needs `with generator.streaming(batch_size):`")
        cfg = self.config
        B, n_user, T = user_codes.shape
        n_in, K = cfg.user_q, cfg.num_streams
        if B != state.batch_size or T != 1 or n_user < n_in:
            raise ValueError(
                f"user codes must be shaped [{state.batch_size}, >= {n_in}, 1] (one frame per step), got {tuple(user_codes.shape)}"
            )
        if (force is None) != (force_mask is None) or (force is not None and (force.shape != (B, K, 1) or force_mask.shape != (B, K, 1))):
            raise ValueError(f"force and force_mask go together, both shaped [{B}, {K}, 1]")
        cache, given, offsets, columns = state.cache, state.given, state.offsets, state.cache.shape[2]
        # The column this step opens (written now, read later) drops the flags of its previous round.
        fresh = ((offsets + cfg.max_delay) % columns)[:, None, None].expand(B, K, 1)
        given.scatter_(2, fresh, torch.zeros_like(fresh, dtype=torch.bool))
        user_rows = slice(1 + cfg.own_q, K)
        write = ((offsets[:, None] + self.delays[user_rows]) % columns)[..., None]  # [B, user_q, 1]
        cache[:, user_rows].scatter_(2, write, user_codes[:, :n_in].to(cache.dtype))
        given[:, user_rows].scatter_(2, write, torch.ones_like(write, dtype=torch.bool))
        ahead = ((offsets + 1) % columns)[:, None, None].expand(B, K, 1)  # the column this step samples
        if force is not None:
            cache.scatter_(2, ahead, torch.where(force_mask, force.to(cache.dtype), cache.gather(2, ahead)))
            given.scatter_(2, ahead, given.gather(2, ahead) | force_mask)

        unseen = offsets[:, None] <= self.delays[None, :]  # [B, K]: stream not written yet for this frame
        read = (offsets % columns)[:, None, None].expand(B, K, 1)
        tokens = torch.where(unseen, self.initial, cache.gather(2, read)[..., 0])  # [B, K]

        conditions = tuple(
            c.flatten(0, 1) for c in (state.condition_sum, state.cross_kv) if c is not None
        )  # [B * C, ...] each
        if self.lm.config.cross_attention and state.cross_kv is None:
            raise RuntimeError("this model attends to conditions: call set_conditions(item, ...) for every item first")
        if self.cfg:  # rows 2b (conditioned) and 2b + 1 (null) for item b
            tokens = tokens.repeat_interleave(2, dim=0)
            if self.cfg_no_text:
                tokens[1::2, 0] = torch.where(unseen[:, 0], tokens[1::2, 0], ZERO_TOKEN)  # the null rows see no text
            if embeddings is not None:
                embeddings, embeddings_mask = embeddings.repeat_interleave(2, dim=0), embeddings_mask.repeat_interleave(2, dim=0)
        if embeddings is None:
            hidden, text_logits = self._graphed("temporal", self._temporal)(tokens[..., None], *conditions)  # [B, 1, dim], [B, 1, Vt]
        else:
            use = embeddings_mask.view(-1, 1, 1).to(embeddings.device)
            hidden, text_logits = self._graphed("temporal_embedded", self._temporal_embedded)(tokens[..., None], embeddings, use, *conditions)
        if self.cfg:
            text_logits = text_logits[0::2] if self.cfg_no_text else self._mix(text_logits)
        text = sample_token(text_logits[:, 0], self.temp_text, self.top_k_text, self._rng)  # [B]
        # What the next column already holds as given (forced ahead, or delayed user codes): the Depth Transformer
        # takes those as inputs in place of its samples.
        ahead = ahead[:, : 1 + cfg.dep_q]
        next_tokens = cache[:, : 1 + cfg.dep_q].gather(2, ahead)[..., 0]  # [B, 1 + dep_q]
        next_given = given[:, : 1 + cfg.dep_q].gather(2, ahead)[..., 0]
        text = torch.where(next_given[:, 0], next_tokens[:, 0], text)
        state.hidden = hidden
        if text_hook is not None:
            text = text_hook(text)
        if run_depth and cfg.dep_q:
            audio = self._graphed("depth", self._depth)(text, hidden, next_tokens[:, 1:], next_given[:, 1:])  # [B, dep_q]
        else:  # no Depth Transformer (speech-to-text: [B, 0]), or the caller's audio (TTS)
            audio = torch.full((B, cfg.dep_q), ZERO_TOKEN, dtype=torch.long, device=text.device)
        if audio_hook is not None:
            audio = audio_hook(audio)

        offsets.add_(1)
        state.steps += 1
        generated = torch.cat([text[:, None], audio], dim=1)  # [B, 1 + dep_q]
        generated = torch.where(next_given, next_tokens, generated)[..., None]
        cache[:, : 1 + cfg.dep_q].scatter_(2, ahead, generated)
        if state.steps <= cfg.max_delay:
            return None
        own = 1 + cfg.own_q
        back = (offsets[:, None] - cfg.max_delay + self.delays[:own]) % columns
        out = cache[:, :own].gather(2, back[..., None])
        too_early = (offsets <= cfg.max_delay)[:, None, None]
        return torch.where(too_early, torch.full_like(out, UNGENERATED_TOKEN), out)

    @torch.no_grad()
    def step_with_extra_heads(self, user_codes: torch.Tensor, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """:meth:`step`, and with its tokens the softmax of each of the LM's extra heads on this step's Temporal
        output: a list of ``extra_heads_num_heads`` tensors [B, 1, extra_heads_dim] (None while :meth:`step`
        returns None). Note the heads belong to the frame stepped now, the tokens to ``max_delay`` frames back,
        as in the reference."""
        out = self.step(user_codes, **kwargs)
        if out is None:
            return None
        return out, self.lm.extra_head_probs(self._streaming_state.hidden)

    def _condition_args(self, conditions: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(sum, cross keys/values) from the present ones, in :meth:`step`'s order."""
        provider = self.lm.condition_provider
        it = iter(conditions)
        total = next(it) if provider is not None and provider.sum_names else None
        cross = next(it) if provider is not None and provider.cross_names else None
        return total, cross

    def _temporal(self, tokens: torch.Tensor, *conditions: torch.Tensor):
        return self.lm.temporal(tokens, *self._condition_args(conditions))

    def _temporal_embedded(self, tokens: torch.Tensor, embeddings: torch.Tensor, use: torch.Tensor, *conditions: torch.Tensor):
        """The Temporal step with the input embeddings of items where ``use`` [B, 1, 1] replaced by ``embeddings``."""
        x = self.lm.embed(tokens)
        return self.lm.temporal_embedded(torch.where(use, embeddings.to(x.dtype), x), *self._condition_args(conditions))

    def _graphed(self, name: str, fn):
        """``fn``, or on CUDA its :class:`GraphedStep` for this streaming session."""
        state = self._streaming_state
        if not self.cuda_graphs or state.cache.device.type != "cuda":
            return fn
        key = (name, state.batch_size)  # one graph per batch size (`rows(n)` buckets)
        if key not in state.graphs:
            state.graphs[key] = GraphedStep(fn)
        return state.graphs[key]

    def _depth(self, text: torch.Tensor, hidden: torch.Tensor, given_tokens: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Sample the frame's dep_q audio codebooks one by one: text [B], hidden [B, 1, dim] → [B, dep_q]. Where
        ``given`` [B, dep_q], the next step's input is ``given_tokens`` [B, dep_q] instead of the sample."""
        lm, cache = self.lm, self._streaming_state.depth_cache
        previous, out = text[:, None], []
        for k in range(self.config.dep_q):
            step_in = previous.repeat_interleave(2, dim=0) if self.cfg else previous  # [B * C, 1]
            logits = lm.depth_logits(k, lm.depformer.step(lm.depth_input(k, hidden, step_in), k, cache))[:, 0]
            if self.cfg:
                logits = self._mix(logits)
            token = sample_token(logits, self.temp, self.top_k, self._rng)  # [B]
            out.append(token)
            previous = torch.where(given[:, k], given_tokens[:, k], token)[:, None]
        return torch.stack(out, dim=1)
