"""Steps of scripts/make_demo_model.sh that no fullduplex command does: corpus text, channel files, measures, packing.

    python scripts/demo_tools.py text MANIFEST --output corpus.txt
    python scripts/demo_tools.py channels MANIFEST --output DIR [--right-only]
    python scripts/demo_tools.py text-loss --model DIR --valid SHARDS --train SHARDS --output text_loss.json
    python scripts/demo_tools.py onsets --generated DIR --truth DIR --output onsets.json
    python scripts/demo_tools.py pack --lm DIR --codec RUN --output fullduplex/assets/demo [--user-sample DIALOGUE.wav]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch


def cmd_text(args: argparse.Namespace) -> None:
    """One line per turn (a run of one speaker's words in time order) of every dialogue's alignments."""
    from fullduplex.data.formats import alignments_path, read_alignments, read_manifest

    lines = []
    for manifest in args.manifest:
        entries, problems = read_manifest(manifest)
        if problems:
            raise SystemExit(f"error: {manifest}: {problems[0]}")
        for entry in entries:
            words = sorted(read_alignments(alignments_path(entry.path)), key=lambda w: w.start)
            run, speaker = [], None
            for w in words:
                if w.speaker != speaker and run:
                    lines.append(" ".join(run))
                    run = []
                speaker = w.speaker
                run.append(w.text)
            if run:
                lines.append(" ".join(run))
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {args.output}")


def cmd_channels(args: argparse.Namespace) -> None:
    """Each dialogue's channels as mono 24 kHz files: STEM.user.wav (right) and, without --right-only,
    STEM.left.wav too."""
    from fullduplex.codec.audio import write_wav
    from fullduplex.data.formats import read_manifest, read_stereo

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    entries, _ = read_manifest(args.manifest)
    for entry in entries:
        stereo = read_stereo(entry.path, 24000)
        write_wav(out / f"{entry.path.stem}.user.wav", stereo[1:2], 24000)
        if not args.right_only:
            write_wav(out / f"{entry.path.stem}.left.wav", stereo[0:1], 24000)
    print(f"wrote {len(entries) * (1 if args.right_only else 2)} files to {out}")


def cmd_text_loss(args: argparse.Namespace) -> None:
    """Text-stream cross-entropy of the LM on held-out shards (teacher forcing), beside two baselines: a uniform
    guess over the vocabulary, and the unigram distribution of the training shards' text tokens."""
    from fullduplex.checkpoint.lm import load_lm
    from fullduplex.data.shards import ShardDataset
    from fullduplex.lm.model import ZERO_TOKEN

    lm = load_lm(args.model, device="cpu").eval()
    cfg = lm.config
    counts = torch.ones(cfg.text_card)  # add-one smoothing
    for item in ShardDataset([args.train]):
        text = item["codes"][0]
        counts += torch.bincount(text[text >= 0], minlength=cfg.text_card)[: cfg.text_card].float()
    unigram = -(counts / counts.sum()).log()
    total = {"all": [0.0, 0.0, 0], "words": [0.0, 0.0, 0]}
    with torch.no_grad():
        for item in ShardDataset([args.valid]):
            codes = item["codes"][None]
            for start in range(0, codes.shape[-1], cfg.context):
                piece = codes[..., start : start + cfg.context]
                out = lm(piece)
                logits = out.text_logits[0, 0].float()  # [T, V]
                target = piece[0, 0]
                valid = out.text_mask[0, 0] & (target != ZERO_TOKEN)
                ce = torch.nn.functional.cross_entropy(logits[valid], target[valid], reduction="none")
                base = unigram[target[valid]]
                words = (target[valid] != cfg.text_pad_id) & (target[valid] != cfg.text_epad_id)
                for key, mask in (("all", torch.ones_like(words)), ("words", words)):
                    total[key][0] += float(ce[mask].sum())
                    total[key][1] += float(base[mask].sum())
                    total[key][2] += int(mask.sum())
    report = {
        key: {"model_ce": s / n, "unigram_ce": b / n, "uniform_ce": math.log(cfg.text_card), "tokens": n}
        for key, (s, b, n) in total.items()
    }
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def _speech(path: Path, vad) -> tuple[list, list, float]:
    from fullduplex.eval.turns import ipus, normalize
    from fullduplex.eval.vad import read_channels, speech_intervals

    channels = read_channels(path, vad.sample_rate)
    duration = channels.shape[-1] / vad.sample_rate
    left, right = (ipus(normalize(speech_intervals(c, vad), duration), 0.2) for c in channels[:2])
    return left, right, duration


def onset_stats(files: list[Path], vad) -> dict:
    """Where the left speaker's IPUs start relative to the right speaker's (the user's) IPUs.

    An onset is *during* the user's turn when it falls strictly inside a user IPU, *after* otherwise (in a gap or
    pause of the user, once the user has spoken). Chance: the share of that time span (from the user's first IPU
    start to the end) in which the user is silent — what an onset placed at random would give."""
    during = after = 0
    silent = span = 0.0
    responses = []
    for path in files:
        left, right, duration = _speech(path, vad)
        if not right:
            continue
        first = right[0][0]
        for start, _ in left:
            if start < first:
                continue
            if any(s < start < e for s, e in right):
                during += 1
            else:
                after += 1
                ended = [e for s, e in right if e <= start]
                if ended:
                    responses.append(start - max(ended))
        span += duration - first
        silent += (duration - first) - sum(e - max(s, first) for s, e in right if e > first)
    onsets = during + after
    responses.sort()
    return {
        "files": len(files), "onsets": onsets, "during_user_ipu": during, "after_user_ipu": after,
        "share_after": after / onsets if onsets else None, "chance_share_after": silent / span if span else None,
        "median_response_s": responses[len(responses) // 2] if responses else None,
    }


def cmd_onsets(args: argparse.Namespace) -> None:
    from fullduplex.eval.vad import VadSettings

    vad = VadSettings(args.vad)
    report = {}
    for name, folder in (("generated", args.generated), ("truth", args.truth)):
        files = sorted(p for p in Path(folder).glob("*.wav"))
        report[name] = onset_stats(files, vad)
    report["vad"] = args.vad
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def cmd_pack(args: argparse.Namespace) -> None:
    """The exported LM folder and the codec run → the demo folder (float16 weights, one config.json)."""
    from fullduplex.atomic import OutputKind, folder_output
    from fullduplex.checkpoint.convert import checkpoint_folder_files
    from fullduplex.checkpoint.lm import load_lm, save_lm
    from fullduplex.checkpoint.mimi import load_mimi, save_mimi
    from fullduplex.codec.config import MimiConfig

    lm_dir, codec_run, out = Path(args.lm), Path(args.codec), Path(args.output)
    mimi_config = json.loads((codec_run / "mimi_config.json").read_text())["mimi_config"]
    lm_config = json.loads((lm_dir / "config.json").read_text())
    # Replaces only an earlier pack (its config.json names the files; plus user.wav), never other files.
    kind = OutputKind("demo_tools.py pack", lambda f: None if (names := checkpoint_folder_files(f)) is None
                      else names | {"user.wav"})
    with folder_output(out, kind, overwrite=True) as tmp:
        lm = load_lm(lm_dir, device="cpu")
        save_lm(lm, tmp / "model.safetensors", dtype=torch.float16)
        mimi = load_mimi(codec_run / "mimi.safetensors", config=MimiConfig.from_moshi_dict(mimi_config), num_codebooks=None)
        save_mimi(mimi, tmp / "mimi.safetensors", dtype=torch.float16)
        shutil.copyfile(lm_dir / lm_config["tokenizer_name"], tmp / "tokenizer.model")
        if args.user_sample:  # the user (right channel) of a held-out dialogue: scripts/demo.sh's input, 16 kHz
            from fullduplex.codec.audio import write_wav
            from fullduplex.data.formats import read_stereo

            write_wav(tmp / "user.wav", read_stereo(args.user_sample, 16000)[1:2], 16000)
        lm_config.update(moshi_name="model.safetensors", mimi_name="mimi.safetensors", tokenizer_name="tokenizer.model",
                         mimi_config=mimi_config)
        (tmp / "config.json").write_text(json.dumps(lm_config, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("text")
    p.add_argument("manifest", nargs="+")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_text)
    p = sub.add_parser("channels")
    p.add_argument("manifest")
    p.add_argument("--output", required=True)
    p.add_argument("--right-only", action="store_true")
    p.set_defaults(func=cmd_channels)
    p = sub.add_parser("text-loss")
    p.add_argument("--model", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_text_loss)
    p = sub.add_parser("onsets")
    p.add_argument("--generated", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--vad", default="silero")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_onsets)
    p = sub.add_parser("pack")
    p.add_argument("--lm", required=True)
    p.add_argument("--codec", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--user-sample", help="a stereo dialogue whose right channel (the user) ships as user.wav")
    p.set_defaults(func=cmd_pack)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
