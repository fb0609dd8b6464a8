"""``fullduplex data merge``: the parts of one ``data prepare`` run → one shards folder.

Each part (``OUT/part-IIIII-of-NNNNN/``, see :func:`fullduplex.data.prepare.prepare_part`) holds whole shards named
by their place in the manifest and a record of each group's totals. Merging checks that the parts belong together
(same manifest path and content, options, Mimi weights, tokenizer, shard metadata and number of parts; every part
there exactly once and finished), copies the shards, and builds ``index.json`` and ``report.json`` from the
records in manifest order — the same sums in the same order as one process, so the folder is byte-identical to
``data prepare`` run without parts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..atomic import check_output_folder, folder_output
from ..errors import FullduplexError
from .prepare import (
    IDENTITY_WORDS,
    PART_NAME,
    PREPARED,
    PrepareReport,
    part_options,
    part_problems,
    read_part,
    read_records,
    write_totals,
)


def find_parts(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Part folders: each source is a part folder (holding ``part.json``) or a folder of them (``part-*``)."""
    folders: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            raise FullduplexError(f"{path}: no such folder; give the part folders `data prepare --num-shards` wrote "
                                  "(OUT/part-00000-of-00008 ...) or the OUT folder holding them")
        if (path / PART_NAME).is_file():
            folders.append(path)
            continue
        found = sorted(p for p in path.glob("part-*-of-*") if p.is_dir())
        if not found:
            raise FullduplexError(f"{path} is neither a part folder (no part.json) nor a folder of part-*-of-* "
                                  "folders; give what `data prepare --num-shards N --shard-index I` wrote")
        folders.extend(found)
    return folders


def merge(sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], overwrite: bool = False,
          ) -> PrepareReport:
    """Merge the parts in ``sources`` (see :func:`find_parts`) into ``output``, a new or empty folder (or with
    ``overwrite`` a previous ``data prepare`` output). Raises :class:`FullduplexError` naming the first part that
    does not belong, is missing or is unfinished; nothing is written then."""
    folders = find_parts(sources)
    output = Path(output)
    check_output_folder(output, PREPARED, overwrite, protect=folders)
    infos = []
    for folder in folders:
        info = read_part(folder)
        if info is None:
            raise FullduplexError(f"{folder}: part.json is missing or unreadable; run that part again")
        infos.append(info)
    first, identity_keys = infos[0], [k for k in IDENTITY_WORDS if k not in ("format", "shard_index")]
    for folder, info in zip(folders[1:], infos[1:], strict=True):
        for key in identity_keys:
            if info.get(key) != first.get(key):
                raise FullduplexError(f"{folder} and {folders[0]} are not parts of one run (different "
                                      f"{IDENTITY_WORDS[key]}); prepare every part with the same manifest, options "
                                      "and models")
    count = int(first["num_shards"])
    by_index: dict[int, tuple[Path, dict]] = {}
    for folder, info in zip(folders, infos, strict=True):
        index = int(info["shard_index"])
        if index in by_index:
            raise FullduplexError(f"{folder} and {by_index[index][0]} are both part {index} of {count}; give each once")
        by_index[index] = (folder, info)
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise FullduplexError(f"part {missing[0]} of {count} is missing ({len(missing)} of {count} missing); run "
                              f"`data prepare ... --num-shards {count} --shard-index {missing[0]}` and give its folder")
    groups_total = int(first["groups_total"])
    records = {}
    for i in range(count):
        folder, info = by_index[i]
        found = read_records(folder, info["groups"], groups_total)
        if not info.get("finished") or len(found) != len(info["groups"]):
            raise FullduplexError(f"{folder} is unfinished ({len(found)} of {len(info['groups'])} shard groups done); "
                                  f"run its `data prepare ... --shard-index {i}` again to finish it")
        records.update({g: (folder, record) for g, record in found.items()})
    if sorted(records) != list(range(groups_total)):
        raise FullduplexError(f"the parts in {folders[0].parent} do not cover the manifest's shard groups; prepare "
                              "them again with the same --num-shards")
    options = part_options(first)
    ordered = [records[g][1] for g in range(groups_total)]
    report = PrepareReport.of(first["manifest"], options, ordered, part_problems(first))
    with folder_output(output, PREPARED, overwrite, protect=folders) as work:
        for folder, record in (records[g] for g in range(groups_total)):
            if record.shard is not None:
                shutil.copyfile(folder / record.shard["file"], work / record.shard["file"])
        write_totals(work, report, first["shard_meta"])
    return report
