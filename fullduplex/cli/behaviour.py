"""``fullduplex eval behaviour``: Full-Duplex-Bench-style probes run through the model offline.

Registered by :mod:`fullduplex.cli.eval`. Definitions and the report format: ``docs/evaluation.md``,
"Behaviour probes".
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FullduplexError
from ..eval import plots
from ..eval.behaviour import Rules, summarise
from ..eval.probes import KINDS, Timing
from ..eval.report import check_report_folder, fmt, markdown_table, write_json, write_report, write_text

LABEL = ("ours (VAD-based), not comparable to published Full-Duplex-Bench tables unless the same ASR and "
         "thresholds are used")
SHOWN = 6  # probe instances drawn per timeline

EPILOG = """\
examples:
  fullduplex eval behaviour --speech question.wav story.flac --output behaviour/
  fullduplex eval behaviour --speech a.wav --probes turn-end,interrupt --repeats 8 --temp 0 --temp-text 0 \\
      --hf-repo nu-dialogue/j-moshi-ext --output jmoshi-behaviour/
  fullduplex eval behaviour --speech a.wav --asr-model ~/models/faster-whisper-tiny.en --output behaviour-asr/

The user's side of each probe is built from your --speech recordings (any format and rate, stereo mixed down;
each trimmed to its voiced span by --vad): real recordings, or synthetic ones, e.g.
  espeak-ng -v en-us -w question.wav "could you tell me the way to the station please"
and run through the model frame by frame exactly as `fullduplex generate` does. Probes (--probes):
  pause        the user pauses mid-sentence (--pause-range s): does the model take the turn in the pause?
  turn-end     the user finishes: response latency to the model's first speech (within --response-window)
  interrupt    the user talks over the model's answer (--interrupt-after s into it): stop latency, or none
  backchannel  a monologue (--monologue s): the model's short IPUs inside it, per minute
Writes DIR/report.json, DIR/report.md, DIR/timeline-<probe>.png, DIR/latency.png and DIR/<probe>-<i>.wav (left:
model, right: user). The numbers are ours (VAD-based; word-based with --asr-model): not comparable to published
Full-Duplex-Bench tables unless the same ASR and thresholds are used.
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if text.strip() == "all":
        return list(KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown probe {bad[0] if bad else text!r}; choose from {','.join(KINDS)} "
                                         "(comma-separated) or all")
    return [k for k in KINDS if k in kinds]


def add_parser(actions: Any, add_vad_arguments: Any) -> None:
    """Add the ``behaviour`` action to ``fullduplex eval``."""
    from .models import add_model_arguments, add_persona_arguments

    parser = actions.add_parser(
        "behaviour", help="Full-Duplex-Bench-style probes through the model: pauses, turn ends, interruptions, "
        "backchannels", description="Run behaviour probes built from speech recordings through the model offline "
        "and score when it speaks.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("probes")
    io.add_argument("--speech", nargs="+", required=True, metavar="FILE",
                    help="recordings of a user's speech (one sentence or so each) to build the probes from")
    io.add_argument("--output", "-o", required=True, metavar="DIR", help="report folder (created if needed)")
    io.add_argument("--overwrite", action="store_true", help="replace the files of a previous report in DIR")
    io.add_argument("--probes", type=_kinds, default=list(KINDS), metavar="LIST",
                    help=f"comma-separated, from {','.join(KINDS)} (default: all)")
    io.add_argument("--repeats", type=int, default=4, metavar="N",
                    help="probes of each kind; the i-th uses speech file i mod the number of files (default: 4)")
    t = Timing()
    io.add_argument("--lead", type=_seconds, default=t.lead, metavar="S",
                    help=f"silence before the user speaks (default: {t.lead:g})")
    io.add_argument("--pause-range", type=_seconds, nargs=2, default=list(t.pause), metavar=("MIN", "MAX"),
                    help="pause probes: pause lengths, spread evenly over the repeats (default: 1.0 1.5)")
    io.add_argument("--listen", type=_seconds, default=t.listen, metavar="S",
                    help=f"silence after the user's last word (default: {t.listen:g})")
    io.add_argument("--interrupt-after", type=_seconds, default=t.interrupt_after, metavar="S",
                    help=f"interrupt probes: the user starts this long into the model's answer (default: "
                    f"{t.interrupt_after:g})")
    io.add_argument("--monologue", type=_seconds, default=t.monologue, metavar="S",
                    help=f"backchannel probes: length of the user's monologue (default: {t.monologue:g})")
    io.add_argument("--monologue-gap", type=_seconds, default=t.monologue_gap, metavar="S",
                    help=f"backchannel probes: silence between its recordings (default: {t.monologue_gap:g})")
    r = Rules()
    rules = parser.add_argument_group("scoring")
    rules.add_argument("--min-silence", type=_seconds, default=r.min_silence, metavar="S",
                       help=f"model IPUs: the shortest silence that ends one (default: {r.min_silence:g})")
    rules.add_argument("--takeover-min", type=_seconds, default=r.takeover_min, metavar="S",
                       help=f"model speech this long takes the turn (default: {r.takeover_min:g}, FDB's 1 s)")
    rules.add_argument("--takeover-words", type=int, default=r.takeover_words, metavar="N",
                       help=f"with --asr-model: more words than this take the turn (default: {r.takeover_words})")
    rules.add_argument("--response-window", type=_seconds, default=r.response_window, metavar="S",
                       help=f"an answer must start within this after the user stops (default: {r.response_window:g})")
    rules.add_argument("--backchannel-max", type=_seconds, default=r.backchannel_max, metavar="S",
                       help=f"a backchannel is a model IPU shorter than this (default: {r.backchannel_max:g})")
    rules.add_argument("--backchannel-words", type=int, default=r.backchannel_words, metavar="N",
                       help=f"with --asr-model: and at most this many words (default: {r.backchannel_words})")
    rules.add_argument("--long-turn", type=_seconds, default=r.long_turn, metavar="S",
                       help=f"backchannel probes: a model IPU this long takes over (default: {r.long_turn:g})")
    rules.add_argument("--asr-model", metavar="DIR", help="faster-whisper model folder: word-based takeover and "
                       "backchannel rules as in Full-Duplex-Bench (needs `pip install faster-whisper`)")
    rules.add_argument("--asr-language", metavar="LANG", help="with --asr-model: its language, e.g. en (default: "
                       "detected)")
    add_vad_arguments(parser)
    add_persona_arguments(parser)
    run = add_model_arguments(parser, seed_help="random seed, per batch (default: 4242)")
    run.add_argument("--batch-size", type=int, default=8, metavar="N", help="probes run together (default: 8)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=behaviour_command)


def behaviour_command(args: argparse.Namespace) -> int:
    """Check everything, load the model, run the probes, write the report folder."""
    from .. import __version__
    from ..codec.config import MimiConfig
    from ..eval.asr import faster_whisper_transcriber
    from ..eval.probing import load_clip, model_responder, run_probes
    from ..inference.offline import write_stereo_wav
    from .codec import mimi_config_from_arg, progress
    from .eval import vad_from_args
    from .models import check_persona_arguments, load_models, persona_schedule, sampling_from_args

    out = Path(args.output)
    check_report_folder(out, args.overwrite)
    if args.repeats < 1 or args.batch_size < 1:
        raise FullduplexError("--repeats and --batch-size must be at least 1")
    timing = Timing(args.lead, tuple(args.pause_range), args.listen, args.interrupt_after, args.monologue,
                    args.monologue_gap)
    rules = Rules(args.min_silence, args.takeover_min, args.takeover_words, args.response_window,
                  args.backchannel_max, args.backchannel_words, args.long_turn)
    sampling_from_args(args)  # refuse bad sampling settings before reading anything
    vad = vad_from_args(args)
    rate = (mimi_config_from_arg(args.mimi_config) or MimiConfig()).sample_rate
    clips = [load_clip(path, rate, vad) for path in args.speech]
    transcriber = faster_whisper_transcriber(args.asr_model, language=args.asr_language) if args.asr_model else None
    check_persona_arguments(args)
    models = load_models(args)
    prompt = persona_schedule(args, models)
    if models.mimi.sample_rate != rate:  # pragma: no cover - a Mimi config whose rate differs from its preset
        raise FullduplexError(f"Mimi runs at {models.mimi.sample_rate} Hz, expected {rate}")
    frame = models.mimi.frame_size
    with progress(0, "behaviour", args.quiet) as bar:
        def on_frames(n: int) -> None:
            bar.update(n)

        respond = model_responder(models.mimi, models.lm, models.tokenizer, models.sampling, args.batch_size,
                                  on_frames, prompt)

        def counted(inputs: list[Any]) -> list[Any]:
            bar.total = (bar.total or 0) + sum(-(-len(x) // frame) for x in inputs)
            bar.refresh()
            return respond(inputs)

        results = run_probes(clips, args.probes, args.repeats, timing, rules, vad, counted, transcriber)
    report = {
        "command": "behaviour", "label": LABEL,
        "settings": {
            "speech": [c.name for c in clips], "speech_sec": [round(c.duration, 6) for c in clips],
            "probes": list(results), "repeats": args.repeats, "timing": asdict(timing), "rules": rules.describe(),
            "vad": vad.describe(), "scoring": "words (ASR)" if transcriber else "VAD",
            "asr": {"package": "faster-whisper", "model": str(args.asr_model), "language": args.asr_language}
            if transcriber else None,
            "sampling": asdict(models.sampling), "lm": models.lm_path.name, "mimi": models.mimi_path.name,
            "sample_rate": rate, "batch_size": args.batch_size,
            "text_prompt": args.text_prompt, "voice_prompt": args.voice_prompt,
        },
        "summary": {kind: summarise(kind, [i.score for i in inst]) for kind, inst in results.items()},
        "probes": {kind: [_instance(kind, i) for i in inst] for kind, inst in results.items()},
        "fullduplex_version": __version__,
    }
    files: dict[str, Any] = {"report.json": lambda tmp: write_json(tmp, report)}
    for kind, instances in results.items():
        files[f"timeline-{kind}.png"] = lambda tmp, k=kind, inst=instances: plots.probe_timelines(
            [_timeline_row(k, i) for i in inst[:SHOWN]], tmp,
            f"{k} probes ({min(len(inst), SHOWN)} of {len(inst)} shown)\n{LABEL}")
    series = _latency_series(report["probes"])
    if series:
        files["latency.png"] = lambda tmp: plots.cdf(series, tmp, "behaviour probes: latencies (ours, VAD-based)",
                                                     "latency (ms)")
    for kind, instances in results.items():
        for i in instances:
            audio = torch.from_numpy(np.stack([i.model, i.probe.audio]))  # [2, S]: model left, user right
            files[f"{kind}-{i.probe.index}.wav"] = lambda tmp, a=audio: write_stereo_wav(tmp, a, rate)
    files["report.md"] = lambda tmp: write_text(tmp, _markdown(report, series))
    for target in write_report(out, files, args.overwrite):
        print(f"wrote {target}")
    return 0


def _pairs(intervals: Any) -> list[list[float]]:
    return [[round(float(s), 6), round(float(e), 6)] for s, e in intervals]


def _instance(kind: str, i: Any) -> dict[str, Any]:
    out = {"index": i.probe.index, "sources": i.probe.sources, "duration": round(i.probe.duration, 6),
           "times": {k: round(v, 6) for k, v in i.probe.times.items()}, "user": _pairs(i.probe.user),
           "model_speech": _pairs(i.speech), "model_ipus": _pairs(i.ipus), "score": i.score,
           "wav": f"{kind}-{i.probe.index}.wav"}
    if i.words is not None:
        out["words"] = [{"text": w.text, "start": round(w.start, 6), "end": round(w.end, 6)} for w in i.words]
    if i.prefix_max_diff is not None:
        out["prefix_max_diff"] = i.prefix_max_diff
    return out


def _timeline_row(kind: str, i: Any) -> dict[str, Any]:
    t, s = i.probe.times, i.score
    marks: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    highlight: list[tuple[float, float]] = []
    if kind == "pause":
        spans["pause"] = (t["pause_start"], t["pause_end"])
        if s["takeover"]:
            marks["model takes over"] = max(s["detail"]["onset"], t["pause_start"])
        verdict = "takeover" if s["takeover"] else "no takeover"
    elif kind == "turn-end":
        marks["user end"] = t["user_end"]
        if s["responded"]:
            marks["response"] = t["user_end"] + s["raw_latency"]
        verdict = f"latency {s['latency']:.2f} s" if s["responded"] else "no response"
    elif kind == "interrupt":
        marks["prompt end"] = t["prompt_end"]
        if "onset" in t:
            marks["user onset"] = t["onset"]
            marks["user end"] = t["user_end"]
        if s["stopped"]:
            marks["model stops"] = s["model_end"]
        verdict = ("not applicable" if not s["applicable"] else
                   f"stopped after {s['stop_latency']:.2f} s" if s["stopped"] else "did not stop")
    else:
        spans["user's floor"] = (t["floor_start"], t["floor_end"])
        highlight = [tuple(x) for x in s["intervals"]]
        verdict = f"{s['backchannels']} backchannel(s), {fmt(s['per_min'], 1)}/min"
    return {"label": f"{kind} #{i.probe.index} ({Path(i.probe.sources[0]).name}): {verdict}",
            "duration": i.probe.duration, "user": i.probe.user, "model": i.ipus, "marks": marks, "spans": spans,
            "highlight": highlight}


def _latency_series(probes: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    if "pause" in probes:
        series["pause: takeover onset"] = [1000 * p["score"]["detail"]["latency"] for p in probes["pause"]
                                           if p["score"]["takeover"]]
    if "turn-end" in probes:
        series["turn-end: response"] = [1000 * p["score"]["latency"] for p in probes["turn-end"]
                                        if p["score"]["responded"]]
    if "interrupt" in probes:
        series["interrupt: stop"] = [1000 * p["score"]["stop_latency"] for p in probes["interrupt"]
                                     if p["score"]["stopped"]]
    return series


def _ms(summary: dict[str, Any]) -> str:
    return f"{fmt(summary['p50'], 0)} / {fmt(summary['p90'], 0)} (n={summary['n']})"


def _markdown(report: dict[str, Any], series: dict[str, list[float]]) -> str:
    s, summ = report["settings"], report["summary"]
    vad = ", ".join(f"{k} {v}" for k, v in s["vad"].items() if k not in ("sample_rate", "package"))
    rows = []
    if "pause" in summ:
        p = summ["pause"]
        rows.append(["pause", str(p["n"]), f"takeover rate {fmt(p['takeover_rate'])}",
                     _ms(p["takeover_onset_ms"]), f"mean model speech in pause {fmt(p['speech_in_pause_mean'])} s"])
    if "turn-end" in summ:
        p = summ["turn-end"]
        rows.append(["turn-end", str(p["n"]), f"response rate {fmt(p['response_rate'])}", _ms(p["latency_ms"]),
                     f"{p['already_speaking']} already speaking"])
    if "interrupt" in summ:
        p = summ["interrupt"]
        rows.append(["interrupt", str(p["n"]), f"stop rate {fmt(p['stop_rate'])}", _ms(p["stop_latency_ms"]),
                     f"{p['did_not_stop']} did not stop, {p['not_applicable']} not applicable; response rate after "
                     f"{fmt(p['response_rate'])}"])
    if "backchannel" in summ:
        p = summ["backchannel"]
        rows.append(["backchannel", str(p["n"]), f"{fmt(p['per_min'])} per min ({p['backchannels']} in "
                     f"{fmt(p['floor_sec'], 1)} s)", "-", f"takeover rate {fmt(p['takeover_rate'])}"])
    lines = [
        "# Behaviour probes", "", f"**Numbers: {report['label']}.**", "",
        f"Model {s['lm']} with {s['mimi']}; sampling "
        f"{', '.join(f'{k} {v}' for k, v in s['sampling'].items())}. Speech: "
        f"{', '.join(Path(x).name for x in s['speech'])}. {s['repeats']} probe(s) of each kind. Scoring by "
        f"{s['scoring']}; VAD {s['vad']['method']} ({vad}); model IPU min silence {s['rules']['min_silence']:g} s; "
        f"takeover: >= {s['rules']['takeover_min']:g} s of model speech; response window "
        f"{s['rules']['response_window']:g} s. Definitions: docs/evaluation.md, \"Behaviour probes\".", "",
        markdown_table(["probe", "n", "rate", "latency p50 / p90 ms", "notes"], rows),
    ]
    for kind, instances in report["probes"].items():
        lines += [f"## {kind}", ""]
        table = []
        for i in instances:
            sc = i["score"]
            if kind == "pause":
                cells = [f"{i['times']['pause_end'] - i['times']['pause_start']:.2f} s pause",
                         "takeover" if sc["takeover"] else "no takeover", fmt(sc["speech_in_pause"])]
            elif kind == "turn-end":
                cells = ["responded" if sc["responded"] else "no response", fmt(sc["latency"]),
                         "already speaking" if sc["already_speaking"] else ""]
            elif kind == "interrupt":
                cells = ["not applicable" if not sc["applicable"] else "stopped" if sc["stopped"] else "did not stop",
                         fmt(sc["stop_latency"]), sc.get("reason", "")]
            else:
                cells = [str(sc["backchannels"]), fmt(sc["per_min"]), "takeover" if sc["takeover"] else ""]
            table.append([str(i["index"]), Path(i["sources"][0]).name, *cells, f"[{i['wav']}]({i['wav']})"])
        headers = {"pause": ["pause", "verdict", "model speech in pause s"],
                   "turn-end": ["verdict", "latency s", "note"], "interrupt": ["verdict", "stop latency s", "note"],
                   "backchannel": ["backchannels", "per min", "note"]}[kind]
        lines += [markdown_table(["#", "speech", *headers, "audio"], table),
                  f"![{kind} timelines](timeline-{kind}.png)", ""]
    if series:
        lines += ["## Latencies", "", "![latency CDFs](latency.png)", ""]
    return "\n".join(lines) + "\n"
