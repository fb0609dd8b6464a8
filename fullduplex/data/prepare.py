"""Preparation: stereo conversations + alignments → training shards of ``[17, T]`` codes, with a report.

For each manifest line: read the stereo audio at 24 kHz, encode each channel with Mimi (8 codebooks, 12.5 Hz),
align the left speaker's words to a text stream of the same T frames (:mod:`fullduplex.data.align`), and stack

    row 0      text stream of the speaker the model learns to be
    rows 1..8  that speaker's codebooks
    rows 9..16 the other speaker's codebooks

(undelayed; :mod:`fullduplex.data.shards` describes the files). With ``both_sides`` each conversation gives a
second item seen from the right speaker: channels swapped, the right speaker's words as text. A conversation
that cannot be used (missing or mono audio, missing or bad alignments) is skipped and reported with its
manifest line; the rest go on.

**Shards follow the manifest.** The manifest's usable lines are cut into groups of consecutive conversations
(``shard_size`` items' worth: ``shard_size`` conversations, half as many with ``both_sides``); group ``g``
becomes ``shard-g.safetensors`` (no file when all its conversations are skipped). A shard's bytes therefore depend
only on its own conversations, so the manifest can be prepared in parts (:func:`prepare_part`, one process each)
and :mod:`fullduplex.data.merge` joins them by copying files: the result is byte-identical to :func:`prepare` in one
process. A part publishes each shard, then a ``shard-g.done.json`` record of its totals; a restarted part redoes
only the groups without a record. A whole run (:func:`prepare`) is built in a temporary folder renamed into
place at the end, so an interrupted run leaves nothing half-made.

**Batched encoding.** Mimi encodes ``batch_size`` conversations per call: a window of consecutive groups is
sorted by the manifest's durations, cut into batches, and each batch's channels are zero-padded at the end to the
longest and encoded together. Mimi is causal, so the padding changes no frame before it, and the codes trimmed to
each conversation's own length are exactly those of encoding it alone (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..atomic import OutputKind, atomic_output, check_output_folder, folder_output
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
from .parts import Part, assign, file_sha256, module_sha256
from .shards import FORMAT, INDEX_NAME, NUM_STREAMS, write_shard

NUM_CODEBOOKS = (NUM_STREAMS - 1) // 2  # 8 per speaker
CHUNK_FRAMES = 250  # on a GPU Mimi encodes 20 s at a time, so memory does not grow with the conversation
CHUNK_ROWS_FRAMES = 4000  # ... and at most 16 channels of 20 s (320 s) per call, so it does not grow with the batch
# On a CPU, calls whose activations stay in the caches: 2 s and at most 100 channel-frames (8 channel-seconds) per
# call encode twice as fast as 20 s calls (24 vs 12 channel-seconds per second on 2 cores, released-size Mimi).
CPU_CHUNK_FRAMES, CPU_CHUNK_ROWS_FRAMES = 25, 100
WINDOW_BATCHES = 4  # batches sorted together by length: more wastes less padding but holds more codes
REPORT_NAME = "report.json"
PART_NAME = "part.json"
PART_FORMAT = "fullduplex-prepare-part"


@dataclass
class PrepareOptions:
    """``policy`` for collisions, ``both_sides``, items per shard, ``spaced`` words (False for scripts without
    spaces), the folder holding alignments (None: beside each audio file), and conversations per Mimi call
    (``batch_size``: speed and memory only, the shards are the same)."""

    policy: Policy = "drop"
    both_sides: bool = False
    shard_size: int = 64
    spaced: bool = True
    alignments: Path | None = None
    batch_size: int | None = None  # None: 1 on a CPU, 16 on a GPU (see default_batch_size)

    @property
    def sides(self) -> tuple[str, ...]:
        return ("left", "right") if self.both_sides else ("left",)

    @property
    def conversations_per_shard(self) -> int:
        return max(1, self.shard_size // len(self.sides))

    def settings(self) -> dict[str, Any]:
        """What changes the shards (not ``batch_size``), as JSON: parts must agree on it to be merged."""
        return {"policy": self.policy, "both_sides": self.both_sides, "shard_size": self.shard_size,
                "spaced": self.spaced, "alignments": None if self.alignments is None else str(self.alignments)}


@dataclass
class GroupRecord:
    """What one group of conversations gave (``shard-g.done.json`` in a part): per prepared conversation, in
    manifest order, its seconds and speakers; the text counts, the skipped conversations and the shard written
    (``{"file", "items", "frames"}``, None when every conversation was skipped)."""

    group: int
    seconds: list[float] = field(default_factory=list)
    speakers: list[list[str] | None] = field(default_factory=list)
    items: int = 0
    frames: int = 0
    text: AlignStats = field(default_factory=AlignStats)
    skipped: list[Problem] = field(default_factory=list)
    shard: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": [p.to_dict() for p in self.skipped]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupRecord:
        return cls(
            group=int(data["group"]), seconds=[float(s) for s in data["seconds"]], speakers=list(data["speakers"]),
            items=int(data["items"]), frames=int(data["frames"]), text=AlignStats(**data["text"]),
            skipped=[Problem(**p) for p in data["skipped"]], shard=data["shard"],
        )


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

    @classmethod
    def of(cls, manifest: str, options: PrepareOptions, records: Sequence[GroupRecord],
           manifest_problems: Sequence[Problem]) -> PrepareReport:
        """The report of ``records`` (in group order) and the manifest's bad lines: the same sums in the same order
        whether the groups were prepared in one process or in many."""
        report = cls(manifest, options, skipped=list(manifest_problems))
        for record in records:
            for seconds, speakers in zip(record.seconds, record.speakers, strict=True):
                report.conversations += 1
                report.seconds += seconds
                if speakers is not None:
                    report.with_speaker_names += 1
                    report.speakers.update(speakers)
            report.items += record.items
            report.frames += record.frames
            report.text = report.text + record.text
            report.skipped += record.skipped
            if record.shard is not None:
                report.shards.append(record.shard)
        report.skipped.sort(key=lambda p: (p.file, p.line or 0))
        return report

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


# --- encoding ---------------------------------------------------------------------------------------------
def encode_conversations(mimi: Mimi, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Mimi codes of both channels of each conversation, in one batch: ``wavs`` [2, S_i] at Mimi's rate →
    [2, K, T_i], T_i = ceil(S_i / frame_size), exactly the codes of encoding each one alone.

    Rows are zero-padded at the end to the longest (Mimi is causal: later samples change no earlier frame) and
    streamed in chunks of :data:`CHUNK_FRAMES` frames, fewer for big batches (:data:`CHUNK_ROWS_FRAMES`; on a CPU
    the smaller :data:`CPU_CHUNK_FRAMES` / :data:`CPU_CHUNK_ROWS_FRAMES`, which keep a call within the caches); streaming
    equals one batch call (see ``Mimi.encode``), so the chunking changes no code."""
    if not wavs:
        return []
    device = next(mimi.parameters()).device
    frame = mimi.frame_size
    frames = [math.ceil(w.shape[-1] / frame) for w in wavs]
    rows, total = 2 * len(wavs), max(frames) * frame
    most, budget = (CHUNK_FRAMES, CHUNK_ROWS_FRAMES) if device.type != "cpu" else (CPU_CHUNK_FRAMES, CPU_CHUNK_ROWS_FRAMES)
    chunk = frame * min(most, max(1, budget // rows))
    pieces = []
    # A CUDA graph per chunk shape would be captured for each batch's last chunk and used once: not worth it.
    graphs, mimi.cuda_graphs = mimi.cuda_graphs, False
    try:
        with torch.inference_mode(), mimi.streaming(rows):
            for start in range(0, total, chunk):
                piece = torch.zeros(rows, 1, min(chunk, total - start))  # [2B, 1, S]: padded chunk by chunk
                for i, wav in enumerate(wavs):
                    audio = wav[:, start : start + chunk]
                    piece[2 * i : 2 * i + 2, 0, : audio.shape[-1]] = audio
                pieces.append(mimi.encode(piece.to(device)).cpu())
    finally:
        mimi.cuda_graphs = graphs
    codes = torch.cat(pieces, dim=-1)  # [2B, K, T]
    return [codes[2 * i : 2 * i + 2, :, :t].clone() for i, t in enumerate(frames)]


def encode_stereo(mimi: Mimi, wav: torch.Tensor) -> torch.Tensor:
    """Mimi codes of both channels of one conversation: ``wav`` [2, S] → [2, K, T] (see :func:`encode_conversations`)."""
    return encode_conversations(mimi, [wav])[0]


# --- one conversation -------------------------------------------------------------------------------------
@dataclass
class Conversation:
    """A manifest entry read and checked, ready to encode: audio [2, S] at Mimi's rate, its seconds, its words."""

    entry: ManifestEntry
    wav: torch.Tensor
    seconds: float
    words: list


def read_conversation(entry: ManifestEntry, sample_rate: int, options: PrepareOptions, root: Path) -> Conversation:
    """Read a conversation's audio and alignments; raises :class:`DataError` / ``AudioError`` when unusable."""
    wav = read_stereo(entry.path, sample_rate)  # [2, S]
    seconds = wav.shape[-1] / sample_rate
    words = read_alignments(alignments_path(entry.path, root, options.alignments), duration=seconds)
    return Conversation(entry, wav, seconds, words)


def conversation_items(conv: Conversation, codes: torch.Tensor, tokenizer: TextTokenizer,
                       options: PrepareOptions) -> tuple[list[dict[str, Any]], AlignStats]:
    """The items of one conversation (one, or two with ``both_sides``) from its codes [2, K, T], and their text
    counts."""
    entry, frames = conv.entry, codes.shape[-1]
    items, stats = [], AlignStats()
    for side in options.sides:
        own, other = (0, 1) if side == "left" else (1, 0)
        aligned = align_words(side_words(conv.words, side), tokenizer, frames, options.policy, options.spaced)
        stats = stats + aligned.stats
        info: dict[str, Any] = {
            "source": str(entry.path),
            "manifest_line": entry.line,
            "side": side,
            "frames": frames,
            "duration": round(conv.seconds, 6),
            "words": aligned.stats.words,
            "words_dropped": aligned.stats.words_dropped,
        }
        if entry.speakers is not None:
            info["speakers"] = [entry.speakers[own], entry.speakers[other]]
        stacked = torch.cat([aligned.tokens[None], codes[own], codes[other]])  # [17, T]
        items.append({"codes": stacked, "info": info})
    return items, stats


# --- groups of conversations → shards ---------------------------------------------------------------------
USABLE = (FullduplexError, ValueError, OSError)  # what makes one conversation unusable, not the run


def groups_of(entries: Sequence[ManifestEntry], options: PrepareOptions) -> list[list[ManifestEntry]]:
    """The manifest's usable lines cut into consecutive groups, one shard each."""
    n = options.conversations_per_shard
    return [list(entries[i : i + n]) for i in range(0, len(entries), n)]


def shard_name(group: int, groups: int) -> str:
    """``shard-00042.safetensors``: zero-padded to the widest group number, so names sort in manifest order."""
    return f"shard-{group:0{max(5, len(str(groups - 1)))}d}.safetensors"


def record_name(group: int, groups: int) -> str:
    """``shard-00042.done.json``: the record a part writes once group 42 is finished."""
    return shard_name(group, groups).removesuffix(".safetensors") + ".done.json"


def _problem(manifest: Path, entry: ManifestEntry, error: Exception) -> Problem:
    return Problem(str(manifest), " ".join(str(error).split()), entry.line)


def default_batch_size(mimi: Mimi) -> int:
    """Conversations per Mimi call when none is asked: 16 on a GPU; 1 on a CPU, where batching is slower
    (docs/data-preparation.md, "Throughput")."""
    return 1 if next(mimi.parameters()).device.type == "cpu" else 16


def prepare_groups(
    todo: Sequence[int], groups: Sequence[Sequence[ManifestEntry]], mimi: Mimi, tokenizer: TextTokenizer,
    options: PrepareOptions, manifest: Path, folder: Path, shard_meta: dict[str, Any], quiet: bool = False,
) -> Iterator[GroupRecord]:
    """Prepare the groups numbered ``todo`` (in that order) into ``folder``, yielding each group's record once
    its shard is written. Batches of ``options.batch_size`` conversations, sorted by length within a window of
    about :data:`WINDOW_BATCHES` batches of consecutive groups, share one Mimi call."""
    if options.batch_size is None:
        options = replace(options, batch_size=default_batch_size(mimi))
    total = sum(len(groups[g]) for g in todo)
    bar = tqdm(total=total, desc="prepare", unit="conversation", file=sys.stderr, disable=True if quiet else None)
    window: list[int] = []
    for n, g in enumerate(todo):
        window.append(g)
        if sum(len(groups[w]) for w in window) >= WINDOW_BATCHES * options.batch_size or n == len(todo) - 1:
            yield from _prepare_window(window, groups, mimi, tokenizer, options, manifest, folder, shard_meta, bar)
            window = []
    bar.close()


def _prepare_window(
    window: Sequence[int], groups: Sequence[Sequence[ManifestEntry]], mimi: Mimi, tokenizer: TextTokenizer,
    options: PrepareOptions, manifest: Path, folder: Path, shard_meta: dict[str, Any], bar: tqdm,
) -> Iterator[GroupRecord]:
    done: dict[int, tuple[list[dict[str, Any]], AlignStats, float] | Problem] = {}  # by manifest line
    entries = [e for g in window for e in groups[g]]
    by_length = sorted(entries, key=lambda e: (e.duration, e.line))  # the manifest's durations: no file is read
    for start in range(0, len(by_length), options.batch_size):
        batch = by_length[start : start + options.batch_size]
        convs = []
        for entry in batch:
            try:
                convs.append(read_conversation(entry, mimi.sample_rate, options, manifest.parent))
            except USABLE as e:
                done[entry.line] = _problem(manifest, entry, e)
        try:
            codes = encode_conversations(mimi, [c.wav for c in convs])
        except USABLE:  # find which one: encode them one by one
            codes = []
            for conv in convs:
                try:
                    codes.append(encode_stereo(mimi, conv.wav))
                except USABLE as e:
                    done[conv.entry.line] = _problem(manifest, conv.entry, e)
                    codes.append(None)
        for conv, c in zip(convs, codes, strict=True):
            if c is None:
                continue
            try:
                items, stats = conversation_items(conv, c, tokenizer, options)
                done[conv.entry.line] = (items, stats, conv.seconds)
            except USABLE as e:
                done[conv.entry.line] = _problem(manifest, conv.entry, e)
        bar.update(len(batch))
    for g in window:
        record, pending = GroupRecord(g), []
        for entry in groups[g]:
            result = done[entry.line]
            if isinstance(result, Problem):
                record.skipped.append(result)
                continue
            items, stats, seconds = result
            record.seconds.append(seconds)
            record.speakers.append(None if entry.speakers is None else list(entry.speakers))
            record.text = record.text + stats
            record.items += len(items)
            record.frames += sum(item["info"]["frames"] for item in items)
            pending += items
        if pending:
            name = shard_name(g, len(groups))
            write_shard(folder / name, pending, shard_meta)
            record.shard = {"file": name, "items": record.items, "frames": record.frames}
        yield record


def shard_meta_of(tokenizer: TextTokenizer, options: PrepareOptions, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The ``meta`` every shard of a run carries."""
    return {
        "frame_rate": FRAME_RATE,
        "text_pad_id": tokenizer.pad_id,
        "text_epad_id": tokenizer.epad_id,
        "policy": options.policy,
        "spaced": options.spaced,
        **(meta or {}),
    }


def write_totals(folder: Path, report: PrepareReport, shard_meta: dict[str, Any]) -> None:
    """``index.json`` and ``report.json`` of a finished run (one process or merged parts)."""
    if report.conversations == 0:
        first = f"; first: {report.skipped[0]}" if report.skipped else ""
        raise DataError(f"{report.manifest}: no conversation could be prepared ({len(report.skipped)} skipped{first})")
    index = {
        "format": FORMAT,
        "items": report.items,
        "frames": report.frames,
        "hours": round(report.frames / FRAME_RATE / 3600, 6),
        "conversations": report.conversations,
        "both_sides": report.options.both_sides,
        "frame_rate": FRAME_RATE,
        "shards": report.shards,
        "meta": shard_meta,
    }
    _write_json(folder / INDEX_NAME, index, atomic=False)
    _write_json(folder / REPORT_NAME, report.to_dict(), atomic=False)


def _write_json(path: Path, data: dict[str, Any], atomic: bool = True) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if not atomic:  # inside a staging folder that is published whole
        path.write_text(text, encoding="utf-8")
        return
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_inputs(mimi: Mimi, options: PrepareOptions) -> None:
    if mimi.num_codebooks != NUM_CODEBOOKS:
        raise FullduplexError(f"Mimi must give {NUM_CODEBOOKS} codebooks per channel, it gives {mimi.num_codebooks}")
    if options.shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {options.shard_size}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")


# --- one process ------------------------------------------------------------------------------------------
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
    _check_inputs(mimi, options)
    manifest, output = Path(manifest), Path(output)
    check_output_folder(output, PREPARED, overwrite, protect=(manifest,))
    entries, problems = read_manifest(manifest)
    groups = groups_of(entries, options)
    shard_meta = shard_meta_of(tokenizer, options, meta)
    with folder_output(output, PREPARED, overwrite, protect=(manifest,)) as work:
        records = list(prepare_groups(range(len(groups)), groups, mimi, tokenizer, options, manifest, work, shard_meta,
                                      quiet))
        report = PrepareReport.of(str(manifest), options, records, problems)
        write_totals(work, report, shard_meta)
    return report


# --- one part of many -------------------------------------------------------------------------------------
def part_identity(manifest: Path, mimi: Mimi, tokenizer: TextTokenizer, options: PrepareOptions,
                  shard_meta: dict[str, Any], count: int) -> dict[str, Any]:
    """What every part of one run shares (``part.json``): merge refuses parts that differ in any of it."""
    return {
        "format": PART_FORMAT,
        "manifest": str(manifest),
        "manifest_sha256": file_sha256(manifest),
        "num_shards": count,
        "settings": options.settings(),
        "mimi_sha256": module_sha256(mimi),
        "tokenizer_sha256": hashlib.sha256(tokenizer.processor.serialized_model_proto()).hexdigest(),
        "shard_meta": shard_meta,
    }


IDENTITY_WORDS = {  # how a message names each key of part_identity: "different ..."
    "format": "part format", "manifest": "manifest path", "manifest_sha256": "manifest content",
    "num_shards": "--num-shards", "settings": "options (--shard-size, --both-sides, --policy, --no-spaces, "
    "--alignments)", "mimi_sha256": "Mimi weights", "tokenizer_sha256": "tokenizer",
    "shard_meta": "shard metadata (tokenizer or Mimi file name, fullduplex version)", "shard_index": "--shard-index",
}


_PART_FILE = re.compile(r"(part\.json|shard-\d+\.safetensors|shard-\d+\.done\.json)")
_PART_TEMP = re.compile(r"\.(part\.json|shard-\d+\.safetensors|shard-\d+\.done\.json)\..+\.tmp")


def read_part(folder: Path) -> dict[str, Any] | None:
    """A part folder's ``part.json``, or None when it has none (or not one of ours)."""
    try:
        info = json.loads((folder / PART_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == PART_FORMAT else None


def read_records(folder: Path, groups: Sequence[int], count: int) -> dict[int, GroupRecord]:
    """The records of ``groups`` (of ``count`` in the manifest) a part folder holds whose shard (if any) is there
    too."""
    records = {}
    for g in groups:
        path = folder / record_name(g, count)
        if not path.is_file():
            continue
        try:
            record = GroupRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: redo the group
        if record.group == g and (record.shard is None or (folder / record.shard["file"]).is_file()):
            records[g] = record
    return records


def open_part(folder: Path, identity: dict[str, Any], part: Part, overwrite: bool) -> None:
    """Make ``folder`` ready for ``part``: new, or a previous start of the same part (kept, to resume), or with
    ``overwrite`` emptied of a previous part's files. Refuses a folder holding anything else."""
    if folder.exists() and not folder.is_dir():
        raise FullduplexError(f"{folder} is a file; remove it or give another --output")
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not names:
        return
    info = read_part(folder)
    foreign = [n for n in names if not (_PART_FILE.fullmatch(n) or _PART_TEMP.fullmatch(n))]
    if info is None and all(_PART_TEMP.fullmatch(n) for n in names):  # killed before part.json was written
        info, overwrite = dict(identity, shard_index=part.index), True
    if info is None or foreign:
        what = foreign[0] if foreign else names[0]
        raise FullduplexError(f"{folder} is not a `fullduplex data prepare` part (it holds {what!r}); nothing was "
                              "deleted: give another --output")
    differ = [k for k in identity if info.get(k) != identity[k]]
    if info.get("shard_index") != part.index:
        differ.append("shard_index")
    if differ and not overwrite:
        what = IDENTITY_WORDS.get(differ[0], differ[0])
        raise FullduplexError(f"{folder} holds {part} of another run (different {what}); pass --overwrite to start "
                              "this part again, or give another --output")
    for name in names:
        if overwrite or _PART_TEMP.fullmatch(name):  # temporaries of a killed run are never finished files
            (folder / name).unlink()


def prepare_part(
    manifest: str | Path,
    mimi: Mimi,
    tokenizer: TextTokenizer,
    output: str | Path,
    part: Part,
    options: PrepareOptions | None = None,
    meta: dict[str, Any] | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare ``part`` of ``manifest`` into ``output/part-IIIII-of-NNNNN/``: the groups :func:`assign` gives it
    (by the manifest's durations), each shard published as it is done, then its ``shard-g.done.json``. Run again
    after a kill, it keeps the finished groups and redoes the rest; ``part.json`` says ``"finished": true`` at the
    end. Returns this part's report (``fullduplex data merge`` makes the run's)."""
    options = options or PrepareOptions()
    _check_inputs(mimi, options)
    manifest = Path(manifest)
    folder = Path(output) / part.folder_name
    entries, problems = read_manifest(manifest)
    groups = groups_of(entries, options)
    dealt = assign([sum(e.duration for e in es) for es in groups], part.count)
    mine = [g for g, p in enumerate(dealt) if p == part.index]
    shard_meta = shard_meta_of(tokenizer, options, meta)
    identity = part_identity(manifest, mimi, tokenizer, options, shard_meta, part.count)
    open_part(folder, identity, part, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    info = {**identity, "shard_index": part.index, "groups_total": len(groups), "groups": mine,
            "manifest_problems": [p.to_dict() for p in problems], "finished": False}
    _write_json(folder / PART_NAME, info)
    records = read_records(folder, mine, len(groups))
    todo = [g for g in mine if g not in records]
    for record in prepare_groups(todo, groups, mimi, tokenizer, options, manifest, folder, shard_meta, quiet):
        _write_json(folder / record_name(record.group, len(groups)), record.to_dict())
        records[record.group] = record
    report = PrepareReport.of(str(manifest), options, [records[g] for g in mine], problems)
    _write_json(folder / PART_NAME, {**info, "finished": True, "conversations": report.conversations,
                                     "hours": round(report.seconds / 3600, 6)})
    return report


def part_options(identity: dict[str, Any]) -> PrepareOptions:
    """The :class:`PrepareOptions` a part was made with (``batch_size`` aside)."""
    s = identity["settings"]
    return PrepareOptions(policy=s["policy"], both_sides=s["both_sides"], shard_size=s["shard_size"],
                          spaced=s["spaced"], alignments=None if s["alignments"] is None else Path(s["alignments"]))


def part_problems(info: dict[str, Any]) -> list[Problem]:
    return [Problem(**p) for p in info["manifest_problems"]]

