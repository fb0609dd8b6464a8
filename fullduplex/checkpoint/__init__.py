"""Resolving, loading and saving checkpoints in the released formats."""

from .mimi import load_mimi, save_mimi
from .resolve import DEFAULT_REPO, MIMI_NAME, resolve_file

__all__ = ["DEFAULT_REPO", "MIMI_NAME", "load_mimi", "resolve_file", "save_mimi"]
