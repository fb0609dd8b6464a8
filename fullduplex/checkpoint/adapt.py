"""Vocabulary surgery: give a Moshi LM checkpoint a new text tokenizer (J-Moshi, Human-1).

Exactly three tensors depend on the text vocabulary (reference.md section 2.2):

    text_emb.weight            [text_card + 1, dim]             (the extra last row: the initial token)
    depformer_text_emb.weight  [text_card + 1, depformer_dim]
    text_linear.weight         [text_card, dim]                 (the text head; no initial row)

:func:`adapt_checkpoint` resizes them to the new tokenizer's ``vocab_size`` and re-initialises their rows; every
other tensor is copied byte for byte. Rows kept from the old tensor:

- the special ids (:func:`special_ids`): EPAD 0 (= ``<unk>``), ``<s>`` 1, ``</s>`` 2 (EOS for Hibiki), PAD 3; the
  LM has learnt what they mean whatever the language;
- the initial token's row, which moves from old ``text_card`` to new ``text_card`` (it is always the last row);
- with ``init="copy-shared"``, the row of every piece both tokenizers hold (matched by piece text, e.g. ``▁the``).

The other rows are drawn by ``init`` (or by ``fill`` for the pieces ``copy-shared`` cannot copy):

- ``normal``: i.i.d. N(0, sigma^2), sigma the standard deviation of all entries of the old tensor;
- ``mean-cov``: rows ~ N(mu, s * Sigma), mu and Sigma the mean and covariance of the old tensor's rows and
  s = ``cov_scale`` (default 1e-5, as J-Moshi's ``init_moshi_for_ft.py``): every new row starts close to the
  average old row, so the first forward passes look like the pre-trained model's (Hewitt, 2021). The statistics
  are computed per tensor (the head's from the head).

The tensors are streamed (:mod:`fullduplex.checkpoint.stream`): memory holds one input tensor and its
replacement, plus for ``mean-cov`` a ``dim x dim`` covariance in float64 — never two copies of the model.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..atomic import check_output_folder, folder_output
from ..errors import CheckpointError
from ..lm.config import LMConfig, lm_preset
from ..lm.model import LMModel
from ..text.tokenizer import TOKENIZER_NAME, TextTokenizer
from ..text.train import BOS_ID, EOS_ID
from .convert import checkpoint_folder
from .lm import MIMI_MARKERS, MOSHI_NAME, from_released, resolve_lm
from .resolve import DEFAULT_REPO, read_config_json, repo_config
from .state import check_state_dict
from .stream import LazyCheckpoint, TensorSpec, write_safetensors_streaming

Init = Literal["normal", "mean-cov", "copy-shared"]
INITS: tuple[str, ...] = ("normal", "mean-cov", "copy-shared")
DEFAULT_COV_SCALE = 1e-5  # J-Moshi's init_moshi_for_ft.py
EMBEDDINGS = ("text_emb.weight", "depformer_text_emb.weight")  # [text_card + 1, D]: last row = initial token
HEAD = "text_linear.weight"  # [text_card, D]
VOCAB_TENSORS = (*EMBEDDINGS, HEAD)
_ROW_CHUNK = 4096  # rows per float64 block when computing a covariance or sampling


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt_checkpoint` wrote and did."""

    output: Path
    config: LMConfig
    old_text_card: int
    init: str
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # name -> (old shape, new shape)
    kept_ids: tuple[int, ...]  # special rows copied by id
    shared_pieces: int = 0  # rows copied by piece (copy-shared)
    files: list[Path] = field(default_factory=list)


def special_ids(config: LMConfig) -> tuple[int, ...]:
    """Text ids whose rows keep their pre-trained values: EPAD, ``<s>``, ``</s>``, PAD (0..3 for Moshi)."""
    return tuple(sorted({config.text_epad_id, BOS_ID, EOS_ID, config.text_pad_id}))


def shared_pieces(old: TextTokenizer, new: TextTokenizer) -> dict[int, int]:
    """``{new id: old id}`` for ordinary pieces (not control or unknown) whose text both vocabularies hold."""
    old_proc, new_proc = old.processor, new.processor
    out: dict[int, int] = {}
    for new_id in range(new.vocab_size):
        if new_proc.is_control(new_id) or new_proc.is_unknown(new_id):
            continue
        piece = new_proc.id_to_piece(new_id)
        old_id = old_proc.piece_to_id(piece)
        if old_proc.id_to_piece(old_id) == piece and not (old_proc.is_control(old_id) or old_proc.is_unknown(old_id)):
            out[new_id] = old_id
    return out


def sample_rows(
    old: torch.Tensor, n: int, init: str, generator: torch.Generator, cov_scale: float = DEFAULT_COV_SCALE
) -> torch.Tensor:
    """``n`` new rows [n, D] (float32) for a matrix whose old rows are ``old`` [N, D]; ``init`` is ``normal`` or
    ``mean-cov`` (see the module docstring)."""
    old = old.detach()
    dim = old.shape[1]
    if init == "normal":
        std = old.float().std().item()
        return torch.randn(n, dim, generator=generator) * std
    if init != "mean-cov":
        raise ValueError(f"unknown row initialisation {init!r}; choose normal or mean-cov")
    if old.shape[0] < 2:
        raise CheckpointError("mean-cov needs at least two old rows to estimate a covariance")
    mean = old.double().mean(0)
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, old.shape[0], _ROW_CHUNK):  # float64 one block at a time: never a float64 copy of `old`
        block = old[start : start + _ROW_CHUNK].double() - mean
        cov += block.T @ block
    cov /= old.shape[0] - 1
    # Sigma = V diag(lam) V^T; eigh rather than Cholesky because Sigma is singular when N <= D.
    lam, vectors = torch.linalg.eigh(cov)
    factor = vectors * lam.clamp_min(0).sqrt() * math.sqrt(cov_scale)  # factor @ factor.T = s * Sigma
    out = torch.empty(n, dim, dtype=torch.float32)
    for start in range(0, n, _ROW_CHUNK):
        z = torch.randn(min(_ROW_CHUNK, n - start), dim, generator=generator, dtype=torch.float64)
        out[start : start + z.shape[0]] = (mean + z @ factor.T).float()
    return out


def resize_vocab_tensor(
    name: str,
    old: torch.Tensor,
    old_card: int,
    new_card: int,
    init: str,
    kept: tuple[int, ...],
    generator: torch.Generator,
    cov_scale: float = DEFAULT_COV_SCALE,
    shared: dict[int, int] | None = None,
) -> torch.Tensor:
    """The new value of one vocabulary tensor ``name`` (one of :data:`VOCAB_TENSORS`), in ``old``'s dtype:
    ``new_card`` (+1 for the embeddings) rows drawn by ``init``, then the ``kept`` special rows, the initial row
    (embeddings) and the ``shared`` rows (``{new id: old id}``) copied from ``old``."""
    embedding = name in EMBEDDINGS
    rows = new_card + 1 if embedding else new_card
    out = sample_rows(old, rows, init, generator, cov_scale).to(old.dtype)
    for token in kept:
        out[token] = old[token]
    if embedding:
        out[new_card] = old[old_card]  # the initial token is always text_card: the last row
    if shared:
        new_ids = torch.tensor(sorted(shared))
        out[new_ids] = old[torch.tensor([shared[i] for i in sorted(shared)])]
    return out


# --- inputs ---------------------------------------------------------------------------------------------------
def _source_config(
    moshi_weight: str | Path | None, hf_repo: str | None, config: LMConfig | str | Path | None
) -> tuple[Path, dict | None, LMConfig]:
    """(weights file, the raw moshi config dict to build on, the LM architecture)."""
    path, found = resolve_lm(moshi_weight, hf_repo)
    raw: dict | None = None
    if isinstance(config, LMConfig):
        return path, None, config
    if isinstance(config, str) and not config.endswith(".json"):
        try:
            return path, None, lm_preset(config)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    source = Path(config) if config is not None else None
    if source is None:
        text = str(moshi_weight) if moshi_weight is not None else f"hf://{hf_repo or DEFAULT_REPO}"
        folder = Path(text.removeprefix("file://")).expanduser()
        if text.startswith("hf://") and len(text[5:].strip("/").split("/")) == 2:
            raw = repo_config(text[5:].strip("/"))[0]
        elif (folder / "config.json").is_file():
            source = folder / "config.json"
    if source is not None:
        raw = read_config_json(source)
        try:
            found = LMConfig.from_moshi_dict(raw, source=str(source))
        except (TypeError, ValueError) as e:
            raise CheckpointError(str(e)) from None
    return path, raw, found or LMConfig()


def _old_tokenizer(moshi_weight: str | Path | None, hf_repo: str | None, path: Path) -> TextTokenizer | None:
    """The tokenizer that came with the input checkpoint, if one can be found without asking: the input folder's
    (or the weights file's folder's) ``tokenizer_spm_32k_3.model``, or the repo's."""
    text = str(moshi_weight) if moshi_weight is not None else f"hf://{hf_repo or DEFAULT_REPO}"
    if text.startswith("hf://"):
        parts = text[5:].strip("/").split("/")
        try:
            return TextTokenizer.load(f"hf://{parts[0]}/{parts[1]}")
        except CheckpointError:
            return None
    for folder in (Path(text.removeprefix("file://")).expanduser(), path.parent):
        if (folder / TOKENIZER_NAME).is_file():
            return TextTokenizer.load(folder / TOKENIZER_NAME)
    return None


def _check_architecture(source: LazyCheckpoint, config: LMConfig) -> int:
    """Refuse a Mimi file, a non-LM file or weights that do not fit ``config``; return the old ``text_card``.
    Checked on meta tensors built from the header: nothing is read."""
    keys = set(source.keys)
    if keys & set(MIMI_MARKERS):
        raise CheckpointError(f"{source.path} is a Mimi checkpoint, not the LM; pass the LM file ({MOSHI_NAME})")
    missing = [k for k in VOCAB_TENSORS if k not in keys]
    if missing:
        sample = ", ".join(source.keys[:3]) or "no tensors"
        raise CheckpointError(f"{source.path} does not look like a Moshi LM checkpoint: no {missing[0]} (keys: {sample}, ...)")
    old_card = source.spec("text_emb.weight").shape[0] - 1
    if old_card != config.text_card:
        raise CheckpointError(
            f"{source.path}: text_emb.weight has {old_card + 1} rows (text_card {old_card}) but the config says "
            f"text_card={config.text_card}; pass the checkpoint's config.json (--config)"
        )
    meta = ((k, torch.empty(source.spec(k).shape, dtype=source.spec(k).dtype, device="meta")) for k in source.keys)
    state, unknown = from_released(meta, config.dep_q, None)
    with torch.device("meta"):
        model = LMModel(config)
    check_state_dict(model, state, unknown, str(source.path), "LM",
                     "is the architecture right? Pass the checkpoint's config.json (--config) or the matching preset")
    return old_card


def _check_new_tokenizer(tokenizer: TextTokenizer, config: LMConfig, kept: tuple[int, ...]) -> None:
    if tokenizer.vocab_size <= max(kept):
        raise CheckpointError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces: too few to hold the special ids {list(kept)}")
    proc = tokenizer.processor
    for name, token in (("PAD", config.text_pad_id), ("EPAD", config.text_epad_id)):
        if not (proc.is_control(token) or proc.is_unknown(token)):
            warnings.warn(
                f"tokenizer {tokenizer.source}: id {token} (the LM's {name}) is the ordinary piece "
                f"{proc.id_to_piece(token)!r}, so text would read as {name}; train it with `fullduplex tokenizer train`",
                stacklevel=3,
            )


ADAPT = checkpoint_folder("fullduplex adapt")


def _output_config(raw: dict | None, config: LMConfig, new_card: int) -> dict:
    """The config.json of the adapted checkpoint: the input's (or the architecture's) with the new ``text_card``."""
    out = dict(raw) if raw is not None else {**config.to_moshi_dict(), "model_type": "moshi"}
    out.pop("text_card_out", None)  # the head is resized to the new vocabulary
    out.update(text_card=new_card, moshi_name=MOSHI_NAME, tokenizer_name=TOKENIZER_NAME)
    return out


# --- the surgery --------------------------------------------------------------------------------------------
def adapt_checkpoint(
    tokenizer: str | Path | TextTokenizer,
    output: str | Path,
    moshi_weight: str | Path | None = None,
    hf_repo: str | None = None,
    config: LMConfig | str | Path | None = None,
    init: Init = "mean-cov",
    old_tokenizer: str | Path | TextTokenizer | None = None,
    fill: Literal["normal", "mean-cov"] = "mean-cov",
    cov_scale: float = DEFAULT_COV_SCALE,
    seed: int = 0,
    overwrite: bool = False,
    on_write: Callable[[int, int], None] | None = None,
) -> AdaptResult:
    """Write ``output/`` = ``model.safetensors`` + ``config.json`` + ``tokenizer_spm_32k_3.model``: the LM of
    ``moshi_weight`` (a file, folder or ``hf://``; default ``hf_repo``, else moshiko) with its text vocabulary
    replaced by ``tokenizer``'s. See the module docstring for what changes.

    ``config``: the input's architecture (an :class:`LMConfig`, preset name or config.json; default the input
    folder's or repo's config.json, else moshiko 7B). ``old_tokenizer`` (``copy-shared`` only; default the one
    found with the input). ``seed`` makes the new rows reproducible. ``output`` must be new or empty, or with
    ``overwrite`` a previous output of ours (see :func:`fullduplex.atomic.check_output_folder`); it is built in a
    folder beside it and renamed into place when all succeeded. ``on_write(done_bytes, total_bytes)`` reports progress. Raises :class:`CheckpointError`.
    """
    if init not in INITS:
        raise CheckpointError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if fill not in ("normal", "mean-cov"):
        raise CheckpointError(f"unknown fill {fill!r}; choose normal or mean-cov")
    if not cov_scale > 0:
        raise CheckpointError(f"cov_scale must be positive, got {cov_scale}")
    new_tok = tokenizer if isinstance(tokenizer, TextTokenizer) else TextTokenizer.load(tokenizer)
    path, raw, cfg = _source_config(moshi_weight, hf_repo, config)
    output = Path(output)
    protect = tuple(Path(p) for p in (path, new_tok.path, old_tokenizer) if isinstance(p, (str, Path)) and Path(p).exists())
    check_output_folder(output, ADAPT, overwrite, protect)
    if new_tok.path is None:
        raise CheckpointError("the new tokenizer was built in memory; pass its .model file")
    kept = special_ids(cfg)
    _check_new_tokenizer(new_tok, cfg, kept)
    new_card = new_tok.vocab_size

    with LazyCheckpoint(path) as source:
        old_card = _check_architecture(source, cfg)
        shared: dict[int, int] = {}
        if init == "copy-shared":
            old_tok = old_tokenizer if isinstance(old_tokenizer, TextTokenizer) else (
                TextTokenizer.load(old_tokenizer) if old_tokenizer is not None else _old_tokenizer(moshi_weight, hf_repo, path)
            )
            if old_tok is None:
                raise CheckpointError(
                    f"--init copy-shared needs the tokenizer of {path}, and none was found beside it: pass --old-tokenizer"
                )
            old_tok.check_vocabulary(old_card, str(path))
            shared = shared_pieces(old_tok, new_tok)
        row_init = fill if init == "copy-shared" else init
        specs: dict[str, TensorSpec] = {}
        resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for key in source.keys:
            spec = source.spec(key)
            if key in VOCAB_TENSORS:
                rows = new_card + 1 if key in EMBEDDINGS else new_card
                if key == HEAD and spec.shape[0] != old_card:
                    raise CheckpointError(f"{path}: {HEAD} has {spec.shape[0]} rows, expected text_card {old_card}")
                resized[key] = (spec.shape, (rows, *spec.shape[1:]))
                spec = TensorSpec(spec.dtype, (rows, *spec.shape[1:]))
            specs[key] = spec
        total = sum(s.nbytes for s in specs.values())
        generator = torch.Generator().manual_seed(seed)

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for key in source.keys:  # one tensor alive at a time: read, (resize), hand to the writer, drop
                tensor = source.get(key)
                if key in VOCAB_TENSORS:
                    tensor = resize_vocab_tensor(key, tensor, old_card, new_card, row_init, kept, generator, cov_scale, shared)
                yield key, tensor

        done = 0

        def progress(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            if on_write is not None:
                on_write(done, total)

        metadata = {**source.metadata, "format": source.metadata.get("format", "pt"), "fullduplex_adapt": json.dumps({
            "from": str(path), "old_text_card": old_card, "text_card": new_card, "init": init,
            **({"fill": fill} if init == "copy-shared" else {}), "cov_scale": cov_scale, "seed": seed,
            "kept_ids": list(kept), "shared_pieces": len(shared),
        })}
        new_cfg = cfg.with_text_vocabulary(new_card)
        files = [output / name for name in (MOSHI_NAME, "config.json", TOKENIZER_NAME)]
        with folder_output(output, ADAPT, overwrite, protect) as work:
            write_safetensors_streaming(work / MOSHI_NAME, specs, tensors(), metadata, progress)
            (work / "config.json").write_text(json.dumps(_output_config(raw, cfg, new_card), indent=2) + "\n")
            shutil.copyfile(new_tok.path, work / TOKENIZER_NAME)
    return AdaptResult(output, new_cfg, old_card, init, resized, kept, len(shared), files)
