"""Preparation: stereo conversations + alignments → training shards of ``[17, T]`` codes, with a report.

For each manifest line: read the stereo audio at 24 kHz, encode each channel with Mimi (8 codebooks, 12.5 Hz),
align the left speaker's words to a text stream of the same T frames (:mod:`fullduplex.data.align`), and stack

    row 0      text stream of the speaker the model learns to be
    rows 1..8  that speaker's codebooks
    rows 9..16 the other speaker's codebooks

(undelayed; :mod:`fullduplex.data.shards` describes the files). With ``both_sides`` each conversation gives a
second item seen from the right speaker: channels swapped, the right speaker's words as text. A conversation
that cannot be used (missing or mono audio, missing or bad alignments) is skipped and reported with its
manifest line; the rest go on. Everything is written into a temporary folder that becomes the output folder
only at the end, so an interrupted run leaves nothing half-made.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..atomic import OutputKind, check_output_folder, folder_output
from ..codec.mimi import Mimi
from ..errors import FullduplexError
from ..text.tokenizer import FRAME_RATE, TextTokenizer
from .align import AlignStats, Policy, align_words
from .formats import (
    DataError,
    ManifestEntry,
    Problem,
    alignments_path,
    read_alignments,
    read_manifest,
    read_stereo,
    side_words,
)
from .shards import FORMAT, INDEX_NAME, NUM_STREAMS, write_shard

NUM_CODEBOOKS = (NUM_STREAMS - 1) // 2  # 8 per speaker
CHUNK_FRAMES = 250  # Mimi encodes 20 s at a time, so memory does not grow with the conversation
REPORT_NAME = "report.json"


@dataclass
class PrepareOptions:
    """``policy`` for collisions, ``both_sides``, items per shard, ``spaced`` words (False for scripts without
    spaces), and the folder holding alignments (None: beside each audio file)."""

    policy: Policy = "drop"
    both_sides: bool = False
    shard_size: int = 64
    spaced: bool = True
    alignments: Path | None = None


@dataclass
class PrepareReport:
    """Totals of a run; :meth:`to_dict` is ``report.json``."""

    manifest: str
    options: PrepareOptions
    conversations: int = 0
    seconds: float = 0.0
    items: int = 0
    frames: int = 0
    speakers: set[str] = field(default_factory=set)
    with_speaker_names: int = 0
    text: AlignStats = field(default_factory=AlignStats)
    shards: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "conversations": self.conversations,
            "hours": round(self.seconds / 3600, 6),
            "items": self.items,
            "item_hours": round(self.frames / FRAME_RATE / 3600, 6),
            "both_sides": self.options.both_sides,
            "speakers": len(self.speakers) if self.with_speaker_names else None,
            "conversations_with_speaker_names": self.with_speaker_names,
            "policy": self.options.policy,
            "spaced": self.options.spaced,
            "text": self.text.to_dict(),
            "skipped": len(self.skipped),
            "skipped_files": [p.to_dict() for p in self.skipped],
            "shards": self.shards,
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        t = self.text
        speakers = f"{len(self.speakers)} speakers" if self.with_speaker_names else "speakers not named in the manifest"
        lines = [
            f"{self.conversations} conversations, {self.seconds / 3600:.2f} h ({self.seconds:.0f} s), {speakers}; "
            f"{self.items} items in {len(self.shards)} shard(s)",
            f"text stream: {t.frames} frames, pad ratio {t.pad_ratio:.3f}, {t.tokens_placed} word pieces",
            f"collisions ({self.options.policy}): {t.words_dropped} words / {t.tokens_dropped} pieces dropped, "
            f"{t.words_shifted} words shifted, {t.words_outside} past the end, {t.words_truncated} cut at the end",
            f"skipped {len(self.skipped)} conversation(s)" + (" (see the warnings and report.json)" if self.skipped else ""),
        ]
        return "\n".join(lines)


def encode_stereo(mimi: Mimi, wav: torch.Tensor) -> torch.Tensor:
    """Mimi codes of both channels: ``wav`` [2, S] at Mimi's rate → [2, K, T], T = ceil(S / frame_size).

    Streams in chunks of :data:`CHUNK_FRAMES` frames (equal to one batch call, see ``Mimi.encode``)."""
    device = next(mimi.parameters()).device
    frame = mimi.frame_size
    frames = math.ceil(wav.shape[-1] / frame)
    wav = torch.nn.functional.pad(wav, (0, frames * frame - wav.shape[-1]))[:, None]  # [2, 1, T * frame]
    pieces = []
    with torch.inference_mode(), mimi.streaming(2):
        for start in range(0, wav.shape[-1], CHUNK_FRAMES * frame):
            pieces.append(mimi.encode(wav[..., start : start + CHUNK_FRAMES * frame].to(device)).cpu())
    return torch.cat(pieces, dim=-1)  # [2, K, T]


def conversation_items(
    entry: ManifestEntry, mimi: Mimi, tokenizer: TextTokenizer, options: PrepareOptions, root: Path
) -> tuple[list[dict[str, Any]], AlignStats, float]:
    """The items of one conversation (one, or two with ``both_sides``), their text counts and the audio's
    seconds. Raises :class:`DataError` / ``AudioError`` when the conversation cannot be used."""
    wav = read_stereo(entry.path, mimi.sample_rate)  # [2, S]
    seconds = wav.shape[-1] / mimi.sample_rate
    words = read_alignments(alignments_path(entry.path, root, options.alignments), duration=seconds)
    codes = encode_stereo(mimi, wav)  # [2, K, T]
    frames = codes.shape[-1]
    items, stats = [], AlignStats()
    for side in ("left", "right") if options.both_sides else ("left",):
        own, other = (0, 1) if side == "left" else (1, 0)
        aligned = align_words(side_words(words, side), tokenizer, frames, options.policy, options.spaced)
        stats = stats + aligned.stats
        info: dict[str, Any] = {
            "source": str(entry.path),
            "manifest_line": entry.line,
            "side": side,
            "frames": frames,
            "duration": round(seconds, 6),
            "words": aligned.stats.words,
            "words_dropped": aligned.stats.words_dropped,
        }
        if entry.speakers is not None:
            info["speakers"] = [entry.speakers[own], entry.speakers[other]]
        stacked = torch.cat([aligned.tokens[None], codes[own], codes[other]])  # [17, T]
        items.append({"codes": stacked, "info": info})
    return items, stats, seconds


def _prepared_files(folder: Path) -> set[str] | None:
    """The files of a shards folder written by :func:`prepare`, as its ``index.json`` lists them."""
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            return None
        return {INDEX_NAME, REPORT_NAME, *(str(shard["file"]) for shard in index["shards"])}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


PREPARED = OutputKind("fullduplex data prepare", _prepared_files)


def prepare(
    manifest: str | Path,
    mimi: Mimi,
    tokenizer: TextTokenizer,
    output: str | Path,
    options: PrepareOptions | None = None,
    meta: dict[str, Any] | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare every conversation of ``manifest`` into shards in ``output`` (a new or empty folder, or with
    ``overwrite`` a previous output of this function), with ``index.json`` and ``report.json``. ``meta`` is added
    to every shard's meta. Raises :class:`DataError` when no conversation could be used (nothing is written
    then)."""
    options = options or PrepareOptions()
    if mimi.num_codebooks != NUM_CODEBOOKS:
        raise FullduplexError(f"Mimi must give {NUM_CODEBOOKS} codebooks per channel, it gives {mimi.num_codebooks}")
    if options.shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {options.shard_size}")
    manifest, output = Path(manifest), Path(output)
    check_output_folder(output, PREPARED, overwrite, protect=(manifest,))
    entries, problems = read_manifest(manifest)
    report = PrepareReport(str(manifest), options, skipped=list(problems))
    shard_meta = {
        "frame_rate": FRAME_RATE,
        "text_pad_id": tokenizer.pad_id,
        "text_epad_id": tokenizer.epad_id,
        "policy": options.policy,
        "spaced": options.spaced,
        **(meta or {}),
    }
    with folder_output(output, PREPARED, overwrite, protect=(manifest,)) as work:
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            name = f"shard-{len(report.shards):05d}.safetensors"
            write_shard(work / name, pending, shard_meta)
            report.shards.append({"file": name, "items": len(pending), "frames": sum(i["info"]["frames"] for i in pending)})
            pending.clear()

        bar = tqdm(entries, desc="prepare", unit="conversation", file=sys.stderr, disable=True if quiet else None)
        for entry in bar:
            try:
                items, stats, seconds = conversation_items(entry, mimi, tokenizer, options, manifest.parent)
            except (FullduplexError, ValueError, OSError) as e:
                report.skipped.append(Problem(str(manifest), " ".join(str(e).split()), entry.line))
                continue
            report.conversations += 1
            report.seconds += seconds
            report.text = report.text + stats
            if entry.speakers is not None:
                report.with_speaker_names += 1
                report.speakers.update(entry.speakers)
            for item in items:
                report.items += 1
                report.frames += item["info"]["frames"]
                pending.append(item)
                if len(pending) >= options.shard_size:
                    flush()
        bar.close()
        if pending:
            flush()
        report.skipped.sort(key=lambda p: (p.file, p.line or 0))
        if report.conversations == 0:
            first = f"; first: {report.skipped[0]}" if report.skipped else ""
            raise DataError(f"{manifest}: no conversation could be prepared ({len(report.skipped)} skipped{first})")
        index = {
            "format": FORMAT,
            "items": report.items,
            "frames": report.frames,
            "hours": round(report.frames / FRAME_RATE / 3600, 6),
            "conversations": report.conversations,
            "both_sides": options.both_sides,
            "frame_rate": FRAME_RATE,
            "shards": report.shards,
            "meta": shard_meta,
        }
        (work / INDEX_NAME).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (work / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return report

