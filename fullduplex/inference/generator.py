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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..lm.model import UNGENERATED_TOKEN, LMModel
from ..nn.cuda_graph import GraphedStep
from ..nn.streaming import StreamingModule, StreamingState, masked_zero_
from .sampling import sample_token


@dataclass
class GeneratorState(StreamingState):
    cache: torch.Tensor  # [B, K, max_delay + 2] tokens by stream and (frame mod columns)
    given: torch.Tensor  # [B, K, max_delay + 2] bool: the cached token was given (user codes, forced), not sampled
    offsets: torch.Tensor  # [B] frames stepped, per item
    steps: int  # frames stepped since the streaming block began (host side, for the first-output rule)
    depth_cache: torch.Tensor  # [L, 2, B, H, dep_q, d] keys/values of the Depth Transformer, per frame
    graphs: dict = field(default_factory=dict)  # on CUDA: the temporal and depth steps as CUDA graphs, by batch
    # The depth cache is scratch within a frame (each frame writes its slots before reading them): an item's
    # state is its token ring, flags and offset.
    item_tensors = ("cache", "given", "offsets")

    def reset(self, mask: torch.Tensor) -> None:
        masked_zero_(self.cache, mask, UNGENERATED_TOKEN)
        masked_zero_(self.given, mask, False)
        masked_zero_(self.offsets, mask)

    def prefix(self, n: int) -> GeneratorState:
        view = super().prefix(n)
        view.depth_cache = self.depth_cache[:, :, :n]
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
    ) -> None:
        super().__init__()
        self.lm = lm
        self.temp, self.temp_text, self.top_k, self.top_k_text = temp, temp_text, top_k, top_k_text
        self.seed = seed
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
        depth_cache = self.lm.depformer.new_cache(batch_size, device, dtype)
        given = torch.zeros(cache.shape, dtype=torch.bool, device=device)
        return GeneratorState(batch_size, cache, given, offsets, 0, depth_cache)

    @torch.no_grad()
    def step(
        self,
        user_codes: torch.Tensor,
        force: torch.Tensor | None = None,
        force_mask: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        embeddings_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``user_codes`` [B, >= user_q, 1] (extra codebooks are ignored) → None while the acoustic delay
        has not passed (the first call), then [B, 1 + own_q, 1]: the model's text token and audio codes for
        the frame ``max_delay`` steps back. Items stepped fewer than ``max_delay + 1`` times since their last
        reset hold :data:`~fullduplex.lm.model.UNGENERATED_TOKEN` (-2). ``force`` / ``force_mask`` [B, K, 1] and
        ``embeddings`` [B, 1, dim] / ``embeddings_mask`` [B]: see the module docstring."""
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

        if embeddings is None:
            hidden, text_logits = self._graphed("temporal", self.lm.temporal)(tokens[..., None])  # [B, 1, dim], [B, 1, Vt]
        else:
            use = embeddings_mask.view(B, 1, 1).to(embeddings.device)
            hidden, text_logits = self._graphed("temporal_embedded", self._temporal_embedded)(tokens[..., None], embeddings, use)
        text = sample_token(text_logits[:, 0], self.temp_text, self.top_k_text, self._rng)  # [B]
        # What the next column already holds as given (forced ahead, or delayed user codes): the Depth Transformer
        # takes those as inputs in place of its samples.
        ahead = ahead[:, : 1 + cfg.dep_q]
        next_tokens = cache[:, : 1 + cfg.dep_q].gather(2, ahead)[..., 0]  # [B, 1 + dep_q]
        next_given = given[:, : 1 + cfg.dep_q].gather(2, ahead)[..., 0]
        text = torch.where(next_given[:, 0], next_tokens[:, 0], text)
        audio = self._graphed("depth", self._depth)(text, hidden, next_tokens[:, 1:], next_given[:, 1:])  # [B, dep_q]

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

    def _temporal_embedded(self, tokens: torch.Tensor, embeddings: torch.Tensor, use: torch.Tensor):
        """The Temporal step with the input embeddings of items where ``use`` [B, 1, 1] replaced by ``embeddings``."""
        x = self.lm.embed(tokens)
        return self.lm.temporal_embedded(torch.where(use, embeddings.to(x.dtype), x))

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
            x = lm.depformer.step(lm.depth_input(k, hidden, previous), k, cache)
            token = sample_token(lm.depth_logits(k, x)[:, 0], self.temp, self.top_k, self._rng)  # [B]
            out.append(token)
            previous = torch.where(given[:, k], given_tokens[:, k], token)[:, None]
        return torch.stack(out, dim=1)
