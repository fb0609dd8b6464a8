"""``fullduplex speak``: text to speech with Kyutai TTS, one speaker or a two-speaker dialogue.

``SCRIPT`` is a text file. With one voice, its text is one speaker's; with two, each non-empty line is a turn and
the turns alternate (line 1: the first voice). ``<break time="0.5s"/>`` inserts a pause.

Writes ``--output OUT.wav`` (24 kHz, 16-bit): mono for one voice; for two, stereo with the first voice on the left
channel and the second on the right (each channel holds its speaker's turns, silence elsewhere), and beside it
``OUT.json``, the word times in the alignments layout ``fullduplex data prepare`` reads
(``{"alignments": [[word, [start, end], "SPEAKER_MAIN" | "SPEAKER_OTHER"], ...]}``; the left channel's words are
SPEAKER_MAIN). Both files are written under temporary names and renamed into place.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..errors import FullduplexError
from .models import add_model_arguments, load_models, model_config_json, wants_demo

TTS_REPO = "kyutai/tts-1.6b-en_fr"

EPILOG = f"""\
examples:
  fullduplex speak hello.txt --voices alice.safetensors --output hello.wav --hf-repo {TTS_REPO}
  fullduplex speak dialogue.txt --voices alice.safetensors bob.safetensors --output talk.wav --hf-repo {TTS_REPO}

Voices are voice-embedding files (safetensors holding "speaker_wavs" [1, 512, 125], as in kyutai/tts-voices).
--cfg-coef sets the guidance strength (the model's "cfg" condition when it was trained with one, e.g. 2.0).
"""


def register(subparsers: Any) -> None:
    """Add ``speak``."""
    parser = subparsers.add_parser(
        "speak", help="text to speech with Kyutai TTS (one speaker, or a two-speaker stereo dialogue with word times)",
        description="Speak a script with a Kyutai TTS model (config.json tts_config): one voice gives mono speech, "
        "two voices a stereo dialogue (one speaker per channel) and its word times.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("script", metavar="SCRIPT", help="text file: the text, or one turn per line for two voices")
    parser.add_argument("--voices", nargs="+", required=True, metavar="VOICE",
                        help="one or two voice embeddings (.safetensors with speaker_wavs)")
    parser.add_argument("--output", "-o", required=True, metavar="OUT.wav", help="the audio; word times go to OUT.json")
    parser.add_argument("--max-seconds", type=float, default=120.0, metavar="S",
                        help="stop after this much generated audio (default 120)")
    add_model_arguments(parser, cfg_help="guidance strength (the model's cfg condition, e.g. 2.0; 1 is none)")
    parser.set_defaults(func=speak_command)


def make_tts(models, tts_config: dict, cfg_coef: float):
    """The TTS runtime for loaded ``models`` and their ``tts_config``."""
    from ..inference.tts import TTS

    mimi, sampling = models.mimi, models.sampling
    try:
        return TTS(models.lm, models.tokenizer.encode, int(float(tts_config["audio_delay"]) * mimi.frame_rate),
                   int(tts_config.get("second_stream_ahead", 0)), mimi.frame_rate, sampling.temp, sampling.top_k,
                   sampling.top_k_text, cfg_coef, seed=sampling.seed)
    except ValueError as e:
        raise FullduplexError(f"--cfg-coef: {e}") from None


def check_voices(models, paths: list[str], voices: list[torch.Tensor]) -> None:
    provider = models.lm.condition_provider
    if provider is None or "speaker_wavs" not in provider.names:
        raise FullduplexError(f"{models.lm_path} takes no voices (no speaker_wavs condition); is this a Kyutai TTS model?")
    expected = provider.conditioners["speaker_wavs"].dim
    for path, voice in zip(paths, voices, strict=True):
        if voice.shape[1] != expected:
            raise FullduplexError(f"voice {path}: {voice.shape[1]} channels, this model's voices have {expected}")


def read_voice(path: Path) -> torch.Tensor:
    """``speaker_wavs`` [1, C, T] of a voice file; :class:`FullduplexError` naming the file otherwise."""
    from safetensors import safe_open

    if not path.is_file():
        raise FullduplexError(f"voice {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            if "speaker_wavs" not in f.keys():  # noqa: SIM118
                raise FullduplexError(f"voice {path} holds no 'speaker_wavs' tensor; give a TTS voice embedding")
            tensor = f.get_tensor("speaker_wavs")
    except FullduplexError:
        raise
    except Exception as e:  # safetensors raises many types for corrupt files
        raise FullduplexError(f"voice {path}: not a readable safetensors file ({type(e).__name__})") from None
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise FullduplexError(f"voice {path}: speaker_wavs is {list(tensor.shape)}, expected [1, C, T] (e.g. [1, 512, 125])")
    return tensor.float()


def read_script(path: Path, two: bool) -> list[str]:
    if not path.is_file():
        raise FullduplexError(f"script {path}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise FullduplexError(f"script {path} is empty: write the text to speak in it")
    return lines if two else [" ".join(lines)]


def speak_command(args: argparse.Namespace) -> int:
    from ..codec.audio import write_wav
    from ..data.formats import write_alignments
    from ..inference.offline import write_stereo_wav

    if not 1 <= len(args.voices) <= 2:
        raise FullduplexError(f"--voices takes one voice or two (a dialogue), got {len(args.voices)}")
    if args.max_seconds <= 0:
        raise FullduplexError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if wants_demo(args):
        raise FullduplexError(f"speak needs a Kyutai TTS checkpoint: pass --hf-repo {TTS_REPO} (or --moshi-weight ...)")
    output = Path(args.output)
    if output.suffix.lower() != ".wav" or output.is_dir():
        raise FullduplexError(f"--output {output}: give a .wav file name")
    if not output.parent.is_dir():
        raise FullduplexError(f"--output: folder {output.parent} does not exist")
    two = len(args.voices) == 2
    turns = read_script(Path(args.script), two)
    voices = [read_voice(Path(v)) for v in args.voices]
    raw, source = model_config_json(args)
    tts_config = (raw or {}).get("tts_config")
    if not isinstance(tts_config, dict) or "audio_delay" not in tts_config:
        raise FullduplexError(f"{source or 'the model'} has no tts_config.audio_delay: is this a Kyutai TTS model?")
    models = load_models(args)
    mimi = models.mimi
    check_voices(models, args.voices, voices)
    tts = make_tts(models, tts_config, args.cfg_coef)
    audio, words, finished = speak_turns(tts, mimi, turns, voices, args.max_seconds)
    if two:
        write_stereo_wav(output, audio, mimi.sample_rate)
    else:
        write_wav(output, audio, mimi.sample_rate)
    write_alignments(output.with_suffix(".json"), words)
    state = "" if finished else f" (the script did not fit in --max-seconds {args.max_seconds:g})"
    print(f"{output}: {audio.shape[-1] / mimi.sample_rate:.2f} s, {'stereo' if two else 'mono'}, "
          f"{len(words)} words -> {output.with_suffix('.json')}{state}")
    return 0


def speak_turns(tts, mimi, turns: list[str], voices: list[torch.Tensor], max_seconds: float):
    """Speak ``turns`` (alternating speakers, the first voice first): (audio [1, S] for one voice, [2, S] for two
    with a speaker per channel; the words as alignments; whether the script fit in ``max_seconds``)."""
    from ..data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, AlignedWord
    from ..inference.tts import render

    max_steps = int(max_seconds * mimi.frame_rate) + tts.delay_steps
    result = tts.generate([tts.entries(turns)], [tts.conditions(voices)], max_steps=max_steps)
    speech = render(tts, result, mimi, 0)
    audio = speech.audio  # [1, S]
    if len(voices) == 2:  # each channel: its speaker's turns (from a turn's first word to the other's next word)
        owner, current = torch.zeros(audio.shape[-1], dtype=torch.long), 0
        for _, start, _, speaker in speech.words:  # words in time order: only a change of speaker writes
            if speaker != current:
                owner[int(start * mimi.sample_rate) :], current = speaker, speaker
        audio = torch.cat([audio * (owner == 0), audio * (owner == 1)], dim=0)  # [2, S]
    labels = (LEFT_SPEAKER, RIGHT_SPEAKER)
    words = [AlignedWord(t, s, e, labels[spk]) for t, s, e, spk in speech.words]
    return audio, words, result.end_steps[0] is not None


# --- `data synth --engine kyutai-tts` -------------------------------------------------------------------------
def tts_models(model: str | None, seed: int):
    """Load a Kyutai TTS checkpoint for ``data synth``: a folder whose config.json names its files
    (``mimi_name``, ``tokenizer_name``) or ``hf://OWNER/REPO`` (default :data:`TTS_REPO`). (models, tts_config)."""
    from ..checkpoint.resolve import read_config_json

    options: dict[str, Any] = dict(hf_repo=None, moshi_weight=None, mimi_weight=None, tokenizer=None)
    text = model or f"hf://{TTS_REPO}"
    if text.startswith("hf://"):
        options["hf_repo"] = text[len("hf://"):].strip("/")
        raw = None
    else:
        folder = Path(text)
        if not (folder / "config.json").is_file():
            raise FullduplexError(f"--tts {folder}: no config.json there; give a Kyutai TTS folder or hf://OWNER/REPO")
        raw = read_config_json(folder / "config.json")
        options["moshi_weight"] = str(folder)
        for key, name in (("mimi_weight", "mimi_name"), ("tokenizer", "tokenizer_name")):
            if not raw.get(name):
                raise FullduplexError(f"{folder / 'config.json'} names no {name}: the folder must hold the model's files")
            options[key] = str(folder / raw[name])
    args = argparse.Namespace(
        **options, config=None, lora_weight=None, lora_scaling=None, mimi_config=None, fuse_lora=True, temp=None,
        temp_text=None, top_k=None, top_k_text=None, seed=seed, cfg_coef=1.0, conditioned=True, device=None,
        dtype=None, quantize=None, kv_dtype="auto", kv_pages=None,
    )
    raw = raw if raw is not None else model_config_json(args)[0]
    tts_config = (raw or {}).get("tts_config")
    if not isinstance(tts_config, dict) or "audio_delay" not in tts_config:
        raise FullduplexError(f"--tts {text}: its config.json has no tts_config.audio_delay: is it a Kyutai TTS model?")
    return load_models(args), tts_config


def script_turns(script) -> list[str]:
    """A planned dialogue (:class:`~fullduplex.data.dialogues.Script`) as alternating turns, the left speaker's
    first (an empty first turn when the right one opens); a speaker's consecutive turns are joined, backchannels
    left out (the TTS speaks one turn at a time)."""
    turns: list[str] = []
    last = 0
    for turn, line in zip(script.turns, script.lines(), strict=True):
        if not turns and turn.speaker == 1:
            turns.append("")
        elif turns and turn.speaker == last:
            turns[-1] = f"{turns[-1]} {line}".strip()
            continue
        turns.append(line)
        last = turn.speaker
    return turns


def synth_corpus_tts(args: argparse.Namespace) -> int:
    """``data synth --engine kyutai-tts``: the scripted dialogues spoken by Kyutai TTS with two voices, written
    as ``data synth`` writes its corpus (stereo wav + alignments per dialogue, manifest.jsonl, transcripts.txt,
    synth.json)."""
    import json

    from ..atomic import folder_output
    from ..data.dialogues import plan
    from ..data.formats import write_alignments
    from ..data.synth import INFO_NAME, MANIFEST_NAME, SYNTH, TRANSCRIPT_NAME, dialogue_rng
    from ..inference.offline import write_stereo_wav

    if args.lang != "en":
        raise FullduplexError(f"--engine kyutai-tts speaks the English scripts only (Kyutai TTS: English and French), not {args.lang!r}")
    paths = (args.tts_voices or "").split(",")
    if len(paths) != 2 or not all(paths):
        raise FullduplexError("--engine kyutai-tts needs --tts-voices LEFT,RIGHT: two voice embedding files")
    voices = [read_voice(Path(p)) for p in paths]
    output = Path(args.output)
    models, tts_config = tts_models(args.tts, args.seed)
    check_voices(models, paths, voices)
    tts = make_tts(models, tts_config, 1.0)
    mimi = models.mimi
    manifest, transcripts, seconds, words_total, unfinished = [], [], 0.0, 0, 0
    with folder_output(output, SYNTH, args.overwrite) as work:
        for index in range(args.dialogues):
            script = plan(args.lang, dialogue_rng(args.seed, index))
            turns = script_turns(script)
            tts.seed = args.seed * 1_000_003 + index
            audio, words, finished = speak_turns(tts, mimi, turns, voices, 120.0)
            name = f"{args.lang}-{index:05d}"
            write_stereo_wav(work / f"{name}.wav", audio, mimi.sample_rate)
            write_alignments(work / f"{name}.json", words)
            duration = audio.shape[-1] / mimi.sample_rate
            manifest.append({"path": f"{name}.wav", "duration": round(duration, 3), "speakers": paths})
            transcripts += [t for t in turns if t]
            seconds, words_total, unfinished = seconds + duration, words_total + len(words), unfinished + (not finished)
        (work / MANIFEST_NAME).write_text("".join(json.dumps(m) + "\n" for m in manifest), encoding="utf-8")
        (work / TRANSCRIPT_NAME).write_text("".join(t + "\n" for t in transcripts), encoding="utf-8")
        info = {"engine": "kyutai-tts", "model": args.tts or f"hf://{TTS_REPO}", "voices": paths, "language": args.lang,
                "dialogues": args.dialogues, "seed": args.seed, "seconds": round(seconds, 3), "words": words_total}
        (work / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    late = f"; {unfinished} did not fit in 120 s" if unfinished else ""
    print(f"{args.dialogues} dialogues, {seconds / 60:.1f} min, {words_total} words (kyutai-tts){late}")
    print(f"wrote {output / MANIFEST_NAME}")
    return 0
