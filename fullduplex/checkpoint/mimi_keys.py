"""Key map between the released Mimi checkpoint format and our module names. Pure functions, loud failures.

Released names (``keys/mimi.txt``) nest each conv twice (``encoder.model.0.conv.conv.weight``), spell the
attention projections in one of several ways (``in_proj_weight``, ``in_proj.weight``, ``in_projs.0.weight``)
and keep each codebook as ``embedding_sum`` / ``cluster_usage`` per level (older files: ``embed_avg`` /
``embed_sum`` / ``cluster_size``). Ours stacks each RVQ's codebooks into one ``codebooks`` tensor.
"""

from __future__ import annotations

import re

import torch

from ..errors import CheckpointError

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^(encoder|decoder)\.model\.(\d+)\.(?:conv\.conv|convtr\.convtr)\.(weight|bias)$", r"\1.model.\2.\3"),
        (r"^(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(weight|bias)$", r"\1.model.\2.block.\3.\4"),
        (r"^(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.self_attn\.(?:in_proj_weight|in_proj\.weight|in_projs\.0\.weight)$",
         r"\1_transformer.layers.\2.self_attn.in_proj.weight"),
        (r"^(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.self_attn\.(?:out_proj\.weight|out_projs\.0\.weight)$",
         r"\1_transformer.layers.\2.self_attn.out_proj.weight"),
        (r"^(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(norm[12]\.(?:weight|bias)|linear[12]\.weight|layer_scale_[12]\.scale)$",
         r"\1_transformer.layers.\2.\3"),
        (r"^downsample\.conv\.conv\.conv\.weight$", "downsample.weight"),
        (r"^upsample\.convtr\.convtr\.convtr\.weight$", "upsample.weight"),
        (r"^quantizer\.(rvq_first|rvq_rest)\.(input_proj|output_proj)\.weight$", r"quantizer.\1.\2.weight"),
    ]
]
_CODEBOOK = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)$")
_CODEBOOK_FIELDS = {
    "embedding_sum": "embedding_sum", "embed_sum": "embedding_sum", "embed_avg": "embedding_sum",
    "cluster_usage": "cluster_usage", "cluster_size": "cluster_usage",
    "_initialized": None, "inited": None,  # training bookkeeping, unused at inference
}
# Keys of a Moshi LM checkpoint: a clear hint when one is passed where Mimi is expected.
LM_MARKERS = ("text_emb.weight", "text_linear.weight", "depformer_in.0.weight")


def rename_released_key(key: str) -> str | None:
    """Our name for a released (non-codebook) key, or None when the key is not one of Mimi's."""
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def from_released(state: dict[str, torch.Tensor], source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Released Mimi state dict → (our state dict, keys that belong to no Mimi module).

    Codebooks become ``embedding_sum / cluster_usage.clamp(min=1e-5)``, computed in fp32.
    """
    ours: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    books: dict[str, dict[int, dict[str, torch.Tensor]]] = {"rvq_first": {}, "rvq_rest": {}}
    for key, value in state.items():
        match = _CODEBOOK.match(key)
        if match:
            rvq, level, name = match.group(1), int(match.group(2)), match.group(3)
            if name not in _CODEBOOK_FIELDS:
                unknown.append(key)
                continue
            field = _CODEBOOK_FIELDS[name]
            if field is not None:
                books[rvq].setdefault(level, {})[field] = value
            continue
        new = rename_released_key(key)
        if new is None:
            unknown.append(key)
        else:
            ours[new] = value
    for rvq, levels in books.items():
        if not levels:
            continue
        expected = list(range(len(levels)))
        if sorted(levels) != expected:
            raise CheckpointError(f"{source}: quantizer.{rvq} codebook levels {sorted(levels)} are not 0..{len(levels) - 1}")
        tables = []
        for level in expected:
            parts = levels[level]
            for field in ("embedding_sum", "cluster_usage"):
                if field not in parts:
                    raise CheckpointError(f"{source}: missing quantizer.{rvq}.vq.layers.{level}._codebook.{field}")
            usage = parts["cluster_usage"].float().clamp(min=1e-5)
            tables.append(parts["embedding_sum"].float() / usage[:, None])
        shapes = {tuple(t.shape) for t in tables}
        if len(shapes) != 1:
            raise CheckpointError(f"{source}: quantizer.{rvq} codebooks have different shapes {sorted(shapes)}")
        ours[f"quantizer.{rvq}.codebooks"] = torch.stack(tables)
    return ours, unknown


def to_released(state: dict[str, torch.Tensor], transposed: set[str]) -> dict[str, torch.Tensor]:
    """Our Mimi state dict → the released format (legacy fused attention names, as in the released file).

    ``transposed`` names our transposed-conv modules (``decoder.model.2``, ...), which the format spells
    ``convtr.convtr``. Codebooks are written as ``embedding_sum`` with ``cluster_usage`` of ones, which reads
    back exactly.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        module = ".".join(parts[:-1])
        if parts[-1] == "codebooks":
            for level, table in enumerate(value):
                prefix = f"quantizer.{parts[1]}.vq.layers.{level}._codebook."
                out[prefix + "_initialized"] = torch.ones(1, dtype=table.dtype)
                out[prefix + "cluster_usage"] = torch.ones(table.shape[0], dtype=table.dtype)
                out[prefix + "embedding_sum"] = table
            continue
        if parts[0] in ("encoder", "decoder"):
            inner = "convtr.convtr" if module in transposed else "conv.conv"
            new = f"{module}.{inner}.{parts[-1]}"
        elif parts[0].endswith("_transformer"):
            rest = ".".join(parts[1:]).replace("self_attn.in_proj.weight", "self_attn.in_proj_weight")
            new = f"{parts[0]}.transformer.{rest}"
        elif key == "downsample.weight":
            new = "downsample.conv.conv.conv.weight"
        elif key == "upsample.weight":
            new = "upsample.convtr.convtr.convtr.weight"
        else:
            new = key
        out[new] = value
    return out
