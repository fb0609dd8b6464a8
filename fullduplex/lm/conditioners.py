"""Conditions of the Moshi-family LMs that take them: Hibiki's ``description``, Kyutai TTS's ``cfg`` / ``control``
lookup tables and its ``speaker_wavs`` voice embeddings.

A model's ``config.json`` names its conditioners (``conditioners``: name → ``{"type": "lut" | "tensor", ...}``)
and how each reaches the Temporal Transformer (``fuser``): ``sum`` conditions ([B, 1, D] each) are added to every
frame's input embedding; ``cross`` conditions are concatenated along time and attended to by the cross-attention
of every layer (with a sinusoidal position embedding when ``cross_attention_pos_emb``).

Module names follow the released checkpoints: ``condition_provider.conditioners.{name}.embed.weight`` (lookup
tables), ``.output_proj.weight`` and ``.learnt_padding`` [1, 1, D] (what a missing condition becomes).

Conditions are given per item as a dict, name → value: a string (lookup tables; None: absent), or a tensor
[T, C] (tensor conditioners, e.g. a voice embedding; None: absent), or (tensor [T, C], mask [T]) where only
some positions are present. :func:`null_conditions` gives the
"everything dropped" conditions that classifier-free guidance contrasts with (Kyutai TTS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

Conditions = Mapping[str, "str | torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None"]


def _hash_bin(word: str, bins: int) -> int:
    """Index of a value not listed in ``possible_values``: sha256 of its UTF-8 bytes modulo ``bins``."""
    return int(hashlib.sha256(word.encode("utf-8")).hexdigest(), 16) % bins


class Conditioner(nn.Module):
    """One conditioner: its input embedded ([N, T, dim]) → ``output_proj`` → absent positions replaced by
    ``learnt_padding`` (or zero). ``kind`` "lut": a lookup table over ``possible_values`` (or hashed strings);
    "tensor": precomputed tensors [T, dim] (e.g. a [1, 512, 125] voice embedding, transposed)."""

    def __init__(self, name: str, spec: Mapping[str, Any], output_dim: int) -> None:
        super().__init__()
        kind = spec.get("type")
        if kind not in ("lut", "tensor"):
            raise ValueError(f"conditioner {name!r}: type {kind!r} is not supported (only 'lut' and 'tensor')")
        options = dict(spec.get(kind) or {})
        self.name, self.kind = name, kind
        self.dim = int(options.pop("dim"))
        force_linear = options.pop("force_linear", True)
        self.pad_empty = options.pop("pad_empty", True)
        if options.pop("output_bias", False):
            raise ValueError(f"conditioner {name!r}: output_bias is not supported")
        learn_padding = options.pop("learn_padding", True)
        if kind == "lut":
            self.bins = int(options.pop("n_bins"))
            tokenizer = options.pop("tokenizer", "noop")
            if tokenizer != "noop":
                raise ValueError(f"conditioner {name!r}: tokenizer {tokenizer!r} is not supported (only 'noop')")
            values = options.pop("possible_values", None)
            self.possible_values = None if values is None else {str(v): i for i, v in enumerate(values)}
            options.pop("init_scale", None)
            self.embed = nn.Embedding(self.bins + 1, self.dim)  # the last row: an absent value
        if options:
            raise ValueError(f"conditioner {name!r}: unknown settings {sorted(options)}")
        self.output_proj = nn.Linear(self.dim, output_dim, bias=False) if force_linear or self.dim != output_dim else nn.Identity()
        self.learnt_padding = nn.Parameter(torch.zeros(1, 1, output_dim)) if learn_padding else None

    def token(self, value: str | None) -> int:
        """The lookup-table row of ``value`` (None: the padding row)."""
        if value is None:
            return self.bins
        if self.possible_values is None:
            return _hash_bin(value, self.bins)
        if value not in self.possible_values:
            raise ValueError(f"condition {self.name!r}: {value!r} is not one of {sorted(self.possible_values)}")
        return self.possible_values[value]

    def forward(self, values: Sequence[str | torch.Tensor | None]) -> torch.Tensor:
        """N items' values → [N, T, output_dim] (T = 1 for lookup tables; the longest tensor otherwise)."""
        device = self.output_proj.weight.device if isinstance(self.output_proj, nn.Linear) else None
        if self.kind == "lut":
            tokens = torch.tensor([[self.token(v)] for v in values], device=device)
            mask = torch.tensor([[v is not None] for v in values], device=device)
            x = self.embed(tokens)
        else:
            pairs = [v if isinstance(v, tuple) or v is None else (v, torch.ones(v.shape[0], dtype=torch.bool)) for v in values]
            length = max([v[0].shape[0] for v in pairs if v is not None], default=0)
            dtype = self.output_proj.weight.dtype if device is not None else torch.float32
            x = torch.zeros(len(values), length, self.dim, device=device, dtype=dtype)
            mask = torch.zeros(len(values), length, dtype=torch.bool, device=device)
            for i, pair in enumerate(pairs):
                if pair is not None:
                    v, present = pair
                    if v.dim() != 2 or v.shape[1] != self.dim or present.shape != v.shape[:1]:
                        raise ValueError(f"condition {self.name!r}: expected a tensor [T, {self.dim}] (and mask [T]), got {tuple(v.shape)}")
                    x[i, : v.shape[0]] = v.to(x)
                    mask[i, : v.shape[0]] = present.to(mask.device)
        x = self.output_proj(x)
        keep = mask[..., None].to(x.dtype)
        if self.learnt_padding is None:
            return x * keep
        return x * keep + self.learnt_padding * (1 - keep)


def sin_embedding(length: int, dim: int, device: torch.device | None, max_period: float = 10000.0) -> torch.Tensor:
    """[1, length, dim] sinusoidal position embedding: cosines then sines, periods up to ``max_period``."""
    half = dim // 2
    positions = torch.arange(length, device=device, dtype=torch.float32).view(1, -1, 1)
    rates = torch.arange(half, device=device, dtype=torch.float32).view(1, 1, -1)
    phase = positions / (torch.full([], max_period, device=device) ** (rates / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class ConditionProvider(nn.Module):
    """All conditioners of a model (``conditioners.{name}``) and the fuser's plan.

    ``fuse(items)`` turns N items' conditions into (sum [N, 1, D] or None, cross [N, Tc, D] or None).
    """

    def __init__(self, conditioners: Mapping[str, Mapping[str, Any]], fuser: Mapping[str, Any] | None, dim: int) -> None:
        super().__init__()
        self.conditioners = nn.ModuleDict({name: Conditioner(name, spec, dim) for name, spec in conditioners.items()})
        fuser = dict(fuser or {})
        self.sum_names: list[str] = list(fuser.pop("sum", []) or [])
        self.cross_names: list[str] = list(fuser.pop("cross", []) or [])
        if fuser.pop("prepend", []):
            raise ValueError("fuser 'prepend' conditions are not supported")
        self.cross_pos_emb = bool(fuser.pop("cross_attention_pos_emb", False))
        self.cross_pos_emb_scale = float(fuser.pop("cross_attention_pos_emb_scale", 1.0))
        if fuser:
            raise ValueError(f"fuser: unknown settings {sorted(fuser)}")
        for name in self.sum_names + self.cross_names:
            if name not in self.conditioners:
                raise ValueError(f"fuser names condition {name!r}, which has no conditioner ({sorted(self.conditioners)})")

    @property
    def names(self) -> list[str]:
        return list(self.conditioners)

    def fuse(self, items: Sequence[Conditions]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """N items' conditions → (sum [N, 1, D], cross [N, Tc, D]); each None when the fuser has none. Every
        conditioner must be named in each item (None: absent); unknown names are refused."""
        for item in items:
            unknown = set(item) - set(self.conditioners)
            missing = set(self.conditioners) - set(item)
            if unknown or missing:
                raise ValueError(
                    f"conditions must name exactly {sorted(self.conditioners)}"
                    + (f"; unknown {sorted(unknown)}" if unknown else "") + (f"; missing {sorted(missing)}" if missing else "")
                )
        outputs = {name: cond([item[name] for item in items]) for name, cond in self.conditioners.items()}
        total = None
        for name in self.sum_names:
            if outputs[name].shape[1] != 1:
                raise ValueError(f"summed condition {name!r} must have one position, got {outputs[name].shape[1]}")
            total = outputs[name] if total is None else total + outputs[name]
        cross = None
        if self.cross_names:
            cross = torch.cat([outputs[name] for name in self.cross_names], dim=1)
            if self.cross_pos_emb:
                cross = cross + self.cross_pos_emb_scale * sin_embedding(cross.shape[1], cross.shape[2], cross.device).to(cross.dtype)
        return total, cross


def null_conditions(conditions: Conditions) -> dict[str, object]:
    """The same conditions with every one dropped (strings absent, tensors kept in length but all positions
    absent): what classifier-free guidance contrasts with (Kyutai TTS)."""
    out: dict[str, object] = {}
    for name, value in conditions.items():
        if isinstance(value, tuple):
            value = value[0]
        out[name] = (torch.zeros_like(value), torch.zeros(value.shape[0], dtype=torch.bool)) if isinstance(value, torch.Tensor) else None
    return out


def voice_condition(embeddings: Sequence[torch.Tensor], max_speakers: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Kyutai TTS ``speaker_wavs``: up to ``max_speakers`` voice embeddings [1, C, T] (the released voice files:
    C = 512, T = 125) → (tensor [max_speakers * T, C], mask [max_speakers * T]); unused speaker slots are absent
    (the conditioner's learnt padding takes their place)."""
    if not 1 <= len(embeddings) <= max_speakers:
        raise ValueError(f"give 1 to {max_speakers} voice embeddings, got {len(embeddings)}")
    first = embeddings[0]
    if first.dim() != 3 or first.shape[0] != 1:
        raise ValueError(f"a voice embedding is [1, C, T] (e.g. [1, 512, 125]), got {tuple(first.shape)}")
    _, C, T = first.shape
    out = torch.zeros(max_speakers, T, C)
    mask = torch.zeros(max_speakers, T, dtype=torch.bool)
    for i, emb in enumerate(embeddings):
        if tuple(emb.shape) != (1, C, T):
            raise ValueError(f"voice embeddings differ in shape: {tuple(first.shape)} and {tuple(emb.shape)}")
        out[i] = emb[0].t().float()
        mask[i] = True
    return out.view(max_speakers * T, C), mask.view(-1)
