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
    add_model_arguments(parser, seed_help="random seed (default: 4242)")
    for action in parser._actions:
        if action.dest == "cfg_coef":
            action.help = "guidance strength (the model's cfg condition, e.g. 2.0; 1 is none)"
    parser.set_defaults(func=speak_command, conditioned=True)


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
    from ..data.formats import LEFT_SPEAKER, RIGHT_SPEAKER, AlignedWord, write_alignments
    from ..inference.offline import write_stereo_wav
    from ..inference.tts import TTS, render

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
    lm, mimi = models.lm, models.mimi
    provider = lm.condition_provider
    if provider is None or "speaker_wavs" not in provider.names:
        raise FullduplexError(f"{models.lm_path} takes no voices (no speaker_wavs condition); is this a Kyutai TTS model?")
    expected = provider.conditioners["speaker_wavs"].dim
    for path, voice in zip(args.voices, voices, strict=True):
        if voice.shape[1] != expected:
            raise FullduplexError(f"voice {path}: {voice.shape[1]} channels, this model's voices have {expected}")
    sampling = models.sampling
    try:
        tts = TTS(lm, models.tokenizer.encode, int(float(tts_config["audio_delay"]) * mimi.frame_rate),
                  int(tts_config.get("second_stream_ahead", 0)), mimi.frame_rate, sampling.temp, sampling.top_k,
                  sampling.top_k_text, args.cfg_coef, seed=sampling.seed)
    except ValueError as e:
        raise FullduplexError(f"--cfg-coef: {e}") from None
    entries = tts.entries(turns)
    max_steps = int(args.max_seconds * mimi.frame_rate) + tts.delay_steps
    result = tts.generate([entries], [tts.conditions(voices)], max_steps=max_steps)
    speech = render(tts, result, mimi, 0)
    audio = speech.audio  # [1, S]
    if two:  # each channel: its speaker's turns (from a turn's first word to the other speaker's next word)
        owner = torch.zeros(audio.shape[-1], dtype=torch.long)
        for _, start, _, speaker in speech.words:
            owner[int(start * mimi.sample_rate) :] = speaker
        audio = torch.cat([audio * (owner == 0), audio * (owner == 1)], dim=0)  # [2, S]
        write_stereo_wav(output, audio, mimi.sample_rate)
    else:
        write_wav(output, audio, mimi.sample_rate)
    labels = (LEFT_SPEAKER, RIGHT_SPEAKER)
    write_alignments(output.with_suffix(".json"), [AlignedWord(t, s, e, labels[spk]) for t, s, e, spk in speech.words])
    state = "" if result.end_steps[0] is not None else f" (the script did not fit in --max-seconds {args.max_seconds:g})"
    print(f"{output}: {audio.shape[-1] / mimi.sample_rate:.2f} s, {'stereo' if two else 'mono'}, "
          f"{len(speech.words)} words -> {output.with_suffix('.json')}{state}")
    return 0
