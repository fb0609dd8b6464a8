"""``fullduplex train CODEC.yaml`` with ``task: codec``: train a Mimi-architecture codec on speech, on CPU or a GPU.

The model is built from a preset (``model.preset``, e.g. ``demo``) or continues from a released-format file
(``model.checkpoint``). Each step cuts ``run.batch_size`` windows of ``data.segment_seconds`` from the training
audio (a window is drawn with its own generator seeded by ``(seed, step, index)``: a file with probability
proportional to its length, a uniform start, redrawn up to 8 times while the window is nearly silent), runs
encoder → split RVQ (training path: straight-through, commitment loss, EMA codebooks with dead-code
replacement; see :mod:`fullduplex.codec.quantizer`) → decoder, and minimises::

    loss = mel_weight * multi-scale log-mel L1 + stft_weight * multi-scale log-magnitude L1
         + wave_weight * waveform L1 + commitment_weight * commitment

Validation (``run.eval_every``) scores the same reconstruction losses, without commitment, on fixed windows of the
held-out audio. Checkpoints (``RUN/checkpoints/step_N``: weights, EMA statistics, optimiser, RNG) resume exactly,
as the LM recipe's do; at the end ``RUN/mimi.safetensors`` (released format, the best validated step) and
``RUN/mimi_config.json`` (moshi's ``mimi_config`` dict) are written: ``fd.load_mimi(RUN/mimi.safetensors,
config=...)`` or ``--mimi-weight RUN/mimi.safetensors --mimi-config RUN/mimi_config.json`` load them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..codec.config import MimiConfig, mimi_preset
from ..codec.mimi import Mimi
from ..codec.quantizer import EmaSettings
from ..data.formats import audio_files as folder_audio_files
from ..errors import FullduplexError
from . import checkpointing as ckpt
from . import distributed as D
from .checkpointing import Saved
from .config import ConfigError, _build, check_ranges, read_recipe
from .loop import Result, lr_factor, run

EMA_PREFIX = "quantizer_ema."


@dataclass(frozen=True)
class CodecModelConfig:
    preset: str = "demo"  # architecture (fullduplex.codec.config.PRESETS)
    checkpoint: str | None = None  # continue from a released-format Mimi file of that architecture


@dataclass(frozen=True)
class CodecDataConfig:
    train: list[str] = field(default_factory=list)  # audio files, folders of them, or jsonl manifests (required)
    valid: list[str] = field(default_factory=list)
    segment_seconds: float = 2.0
    valid_windows: int = 16  # fixed held-out windows scored at each validation


@dataclass(frozen=True)
class CodecOptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    warmup: int = 50
    schedule: str = "cosine"  # cosine (to min_lr_ratio) | constant
    min_lr_ratio: float = 0.1
    max_steps: int = 1000
    grad_clip: float = 1.0


@dataclass(frozen=True)
class CodecLossConfig:
    mel_weight: float = 1.0
    stft_weight: float = 1.0
    wave_weight: float = 0.1
    commitment_weight: float = 1.0
    scales: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])  # STFT window lengths (samples)
    mel_bins: int = 64
    log_floor: float = 0.1  # added to magnitudes before the log: ~-60 dB, so digital silence is not a cliff
    ema_decay: float = 0.99
    dead_ratio: float = 0.1


@dataclass(frozen=True)
class CodecRunConfig:
    output: str = "runs/codec"
    batch_size: int = 8
    eval_every: int = 100
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0: torch's default


@dataclass(frozen=True)
class CodecTrainConfig:
    task: str = "codec"
    model: CodecModelConfig = field(default_factory=CodecModelConfig)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    optim: CodecOptimConfig = field(default_factory=CodecOptimConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    run: CodecRunConfig = field(default_factory=CodecRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_task(path: str | Path, overrides: list[str] = ()) -> str:
    """The ``task`` of a recipe file (``lm`` when absent), after ``--override task=...``."""
    try:
        raw = read_recipe(path, overrides)
    except ConfigError:
        return "lm"  # load_config reports the problem in its own words
    task = raw.get("task", "lm") if isinstance(raw, dict) else "lm"
    if task not in ("lm", "codec"):
        raise ConfigError(f"{path}: task must be lm or codec, got {task!r}")
    return task


def load_codec_config(path: str | Path | None, overrides: list[str] = (), raw: dict | None = None) -> CodecTrainConfig:
    """Read and validate a codec recipe; relative data and checkpoint paths are read from the YAML's folder."""

    source = str(path) if path is not None else "config"
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    raw = read_recipe(path, overrides, raw)
    cfg = _build(CodecTrainConfig, raw, "", source)

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key} {why}")

    if cfg.task != "codec":
        raise bad("task", f"must be codec for this recipe, got {cfg.task!r}")
    if not cfg.data.train:
        raise bad("data.train", "is required: audio files, folders or jsonl manifests")
    try:
        mimi_preset(cfg.model.preset)
    except ValueError as e:
        raise bad("model.preset", str(e)) from None
    check_ranges(source, cfg, positive=["data.segment_seconds", "optim.lr", "optim.max_steps", "run.batch_size",
                 "run.log_every", "run.keep_checkpoints", "loss.mel_bins", "data.valid_windows", "loss.log_floor"],
                 non_negative=["optim.warmup", "optim.grad_clip", "run.eval_every", "run.save_every", "loss.mel_weight",
                 "loss.stft_weight", "loss.wave_weight", "loss.commitment_weight", "run.threads", "optim.weight_decay"])
    if not 0 < cfg.loss.ema_decay < 1:
        raise bad("loss.ema_decay", f"must be in (0, 1), got {cfg.loss.ema_decay}")
    if cfg.optim.schedule not in ("cosine", "constant"):
        raise bad("optim.schedule", f"must be cosine or constant, got {cfg.optim.schedule!r}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise bad("optim.betas", f"must be two numbers in [0, 1), got {cfg.optim.betas}")
    if not cfg.loss.scales or any(s < 16 for s in cfg.loss.scales):
        raise bad("loss.scales", f"must be window lengths of at least 16 samples, got {cfg.loss.scales}")

    def local(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    train, valid = [local(p) for p in cfg.data.train], [local(p) for p in cfg.data.valid]
    for key, paths in (("data.train", train), ("data.valid", valid)):
        for p in paths:
            if not Path(p).exists():
                raise bad(key, f"names {p!r}, which does not exist (relative paths are read from {base})")
    checkpoint = local(cfg.model.checkpoint) if cfg.model.checkpoint else None
    if checkpoint and not Path(checkpoint).is_file():
        raise bad("model.checkpoint", f"names {checkpoint!r}, which is not a file")
    data = CodecDataConfig(train, valid, cfg.data.segment_seconds, cfg.data.valid_windows)
    return CodecTrainConfig(cfg.task, CodecModelConfig(cfg.model.preset, checkpoint), data, cfg.optim, cfg.loss, cfg.run)


# --- data -------------------------------------------------------------------------------------------------
def audio_files(specs: list[str]) -> list[Path]:
    """Audio files named by ``specs``: files, folders (recursively, sorted) and jsonl manifests (``path`` keys)."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files += folder_audio_files(path)
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)["path"]
                except (ValueError, KeyError, TypeError):
                    raise FullduplexError(f"{path}:{n}: expected a JSON object with a \"path\"") from None
                files.append(path.parent / entry if not Path(entry).is_absolute() else Path(entry))
        else:
            files.append(path)
    return files


def read_corpus(specs: list[str], sample_rate: int) -> list[torch.Tensor]:
    """Every channel of every file as a mono float32 tensor [S] (stereo dialogues give one signal per speaker)."""
    from ..codec.audio import read_audio_channels

    signals = []
    files = audio_files(specs)
    if not files:
        raise FullduplexError(f"no audio files in {', '.join(specs)}")
    for path in files:
        channels, _ = read_audio_channels(path, sample_rate)
        signals += [c.float() for c in channels if c.abs().max() > 0]
    return signals


class Windows:
    """Training windows as a pure function of (seed, step, index): resuming needs only the step number."""

    def __init__(self, signals: list[torch.Tensor], length: int, seed: int) -> None:
        self.signals, self.length, self.seed = signals, length, seed
        sizes = np.array([max(1, s.shape[-1] - length + 1) for s in signals], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def window(self, step: int, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step, index])
        best = None
        for _ in range(8):  # prefer windows holding speech
            signal = self.signals[int(rng.choice(len(self.signals), p=self.weights))]
            start = int(rng.integers(0, max(1, signal.shape[-1] - self.length + 1)))
            piece = signal[start : start + self.length]
            piece = F.pad(piece, (0, self.length - piece.shape[-1]))
            active = float((piece.abs() > 0.01).float().mean())
            if best is None or active > best[0]:
                best = (active, piece)
            if active > 0.3:
                break
        return best[1]

    def batch(self, step: int, size: int) -> torch.Tensor:
        return torch.stack([self.window(step, i) for i in range(size)])[:, None]  # [B, 1, S]


def valid_windows(signals: list[torch.Tensor], length: int, count: int) -> torch.Tensor:
    """``count`` fixed windows spread evenly over the held-out signals: [count, 1, length]."""
    pieces = []
    total = sum(s.shape[-1] for s in signals)
    for i in range(count):
        position = int((i + 0.5) / count * total)
        for s in signals:
            if position < s.shape[-1]:
                start = max(0, min(position, s.shape[-1] - length))
                piece = s[start : start + length]
                pieces.append(F.pad(piece, (0, length - piece.shape[-1])))
                break
            position -= s.shape[-1]
    return torch.stack(pieces)[:, None]


# --- losses -----------------------------------------------------------------------------------------------
def mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (HTK mel scale, 0 Hz .. Nyquist)."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(np.array(0.0)), mel(np.array(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - freqs[None]) / np.maximum(upper - centre, 1e-9)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None)).float()


class ReconstructionLoss(torch.nn.Module):
    """Multi-scale log-mel L1, log-magnitude L1 and waveform L1 between reconstruction and target [B, 1, S]."""

    def __init__(self, cfg: CodecLossConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        for n in cfg.scales:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)
            self.register_buffer(f"mel_{n}", mel_filters(n, min(cfg.mel_bins, n // 4), sample_rate), persistent=False)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y, x = y[:, 0], x[:, 0]
        mel = y.new_zeros(())
        stft = y.new_zeros(())
        for n in self.cfg.scales:
            window = getattr(self, f"window_{n}")
            spec_y = torch.stft(y, n, n // 4, window=window, return_complex=True).abs()
            spec_x = torch.stft(x, n, n // 4, window=window, return_complex=True).abs()
            floor = self.cfg.log_floor
            stft = stft + (torch.log(spec_y + floor) - torch.log(spec_x + floor)).abs().mean()
            filters = getattr(self, f"mel_{n}")
            mel_y = torch.einsum("mf,bft->bmt", filters, spec_y)
            mel_x = torch.einsum("mf,bft->bmt", filters, spec_x)
            mel = mel + (torch.log(mel_y + floor) - torch.log(mel_x + floor)).abs().mean()
        scales = len(self.cfg.scales)
        return {"mel": mel / scales, "stft": stft / scales, "wave": (y - x).abs().mean()}

    def total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        return c.mel_weight * parts["mel"] + c.stft_weight * parts["stft"] + c.wave_weight * parts["wave"]


def codec_step(mimi: Mimi, wav: torch.Tensor, loss_fn: ReconstructionLoss, update: bool,
               settings: EmaSettings | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruct ``wav`` [B, 1, S] (S a whole number of frames) through the training path; (loss, its parts)."""
    z = mimi.encode_latent(wav)
    q = mimi.quantizer.quantize(z, mimi.config.quantizer.n_q, update=update, settings=settings, generator=generator)
    y = mimi.decode_latent(q.z)[..., : wav.shape[-1]]
    parts = loss_fn(y, wav)
    loss = loss_fn.total(parts) + loss_fn.cfg.commitment_weight * q.commitment
    return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()},
                  "commitment": float(q.commitment.detach())}


# --- checkpoints ------------------------------------------------------------------------------------------
def ema_tensors(mimi: Mimi) -> dict[str, torch.Tensor]:
    out = {}
    for half in ("rvq_first", "rvq_rest"):
        for k, v in getattr(mimi.quantizer, half).ema_state().items():
            out[f"{EMA_PREFIX}{half}.{k}"] = v
    return out


def load_ema_tensors(mimi: Mimi, tensors: dict[str, torch.Tensor]) -> None:
    for half in ("rvq_first", "rvq_rest"):
        prefix = f"{EMA_PREFIX}{half}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            getattr(mimi.quantizer, half).load_ema_state(state)


# --- the recipe -------------------------------------------------------------------------------------------
def train_codec(cfg: CodecTrainConfig, stop_after: int | None = None, progress: bool = True) -> Result:
    """Run (or resume) a codec recipe through the training loop; ``stop_after`` returns after that step without a
    final checkpoint. A run that reaches ``max_steps`` exports ``RUN/mimi.safetensors`` (``Result.exported``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FullduplexError(f"the codec recipe runs in one process, not {os.environ['WORLD_SIZE']}: start it without torchrun")
    return run(cfg, lambda d, saved: CodecTask(cfg, d, saved), "train codec", stop_after, progress)


class CodecTask:
    """The codec recipe's part of the loop: windows of the audio, the Mimi training path, its reconstruction loss,
    EMA codebook statistics saved with the weights, the released-format export. One process."""

    def __init__(self, cfg: CodecTrainConfig, d: D.Dist, saved: Saved | None) -> None:
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.cfg, self.device = cfg, d.device
        if cfg.model.checkpoint:
            from ..checkpoint.mimi import load_mimi

            mimi = load_mimi(cfg.model.checkpoint, config=mimi_preset(cfg.model.preset), num_codebooks=None)
        else:
            mimi = Mimi(mimi_preset(cfg.model.preset))
        sr, frame = mimi.sample_rate, mimi.frame_size
        length = max(1, round(cfg.data.segment_seconds * sr / frame)) * frame
        self.windows = Windows(read_corpus(cfg.data.train, sr), length, cfg.run.seed)
        self.valid = valid_windows(read_corpus(cfg.data.valid, sr), length, cfg.data.valid_windows) \
            if cfg.data.valid else None
        self.frames_per_step = cfg.run.batch_size * length // frame
        if saved is not None:
            try:
                mimi.load_state_dict({k: v for k, v in saved.tensors.items() if not k.startswith(EMA_PREFIX)})
            except RuntimeError as e:
                raise FullduplexError(f"{ckpt.step_dir(Path(cfg.run.output), saved.step)} does not fit model.preset "
                                      f"{cfg.model.preset!r} ({str(e).splitlines()[0]}); use a new run.output") from None
            load_ema_tensors(mimi, saved.tensors)
        self.model = mimi.to(self.device).train()
        self.loss_fn = ReconstructionLoss(cfg.loss, sr).to(self.device)
        params = [p for p in mimi.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg.optim))
        self.settings = EmaSettings(cfg.loss.ema_decay, cfg.loss.dead_ratio)
        self.generator = torch.Generator(device=self.device)

    def train_step(self, step: int) -> dict[str, float]:
        self.generator.manual_seed(self.cfg.run.seed * 1_000_003 + step)  # dead-code replacement draws
        wav = self.windows.batch(step, self.cfg.run.batch_size).to(self.device)
        loss, values = codec_step(self.model, wav, self.loss_fn, update=True, settings=self.settings,
                                  generator=self.generator)
        loss.backward()
        return values

    def validate(self) -> float | None:
        """The reconstruction loss (no commitment) of the fixed held-out windows."""
        if self.valid is None:
            return None
        self.model.eval()
        total, size = 0.0, self.cfg.run.batch_size
        with torch.no_grad():
            for i in range(0, self.valid.shape[0], size):
                wav = self.valid[i : i + size].to(self.device)
                _, parts = codec_step(self.model, wav, self.loss_fn, update=False)
                total += (parts["loss"] - self.cfg.loss.commitment_weight * parts["commitment"]) * wav.shape[0]
        self.model.train()
        return total / self.valid.shape[0]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()} | ema_tensors(self.model)

    def state(self) -> dict[str, Any]:
        return {}

    def export(self, run_dir: Path) -> Path | None:
        return export_codec(run_dir, self.model.config)


def export_codec(run_dir: Path, config: MimiConfig) -> Path:
    """Write ``RUN/mimi.safetensors`` (released format) from the best checkpoint (the last one when the run had no
    validation), and ``RUN/mimi_config.json``; returns the weights file."""
    from ..atomic import atomic_output
    from ..checkpoint.mimi import save_mimi

    step = ckpt.pick_checkpoint(run_dir, "best")
    mimi = Mimi(config)
    mimi.load_state_dict({k: v for k, v in ckpt.load_tensors(run_dir, step).items()
                          if not k.startswith(EMA_PREFIX)})
    out = save_mimi(mimi, run_dir / "mimi.safetensors")
    with atomic_output(run_dir / "mimi_config.json") as tmp:
        tmp.write_text(json.dumps({"mimi_config": config.to_moshi_dict(), "step": step}, indent=1) + "\n")
    return out
