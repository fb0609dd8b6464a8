"""Resolving, loading and saving checkpoints in the released formats."""

from .lm import MOSHI_NAME, load_lm, save_lm
from .mimi import load_mimi, save_mimi
from .mlx import save_mlx
from .resolve import DEFAULT_REPO, MIMI_NAME, resolve_file

__all__ = ["DEFAULT_REPO", "MIMI_NAME", "MOSHI_NAME", "load_lm", "load_mimi", "resolve_file", "save_lm", "save_mimi", "save_mlx"]
