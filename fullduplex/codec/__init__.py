"""Mimi, the neural audio codec of the Moshi family."""

from .config import MimiConfig, mimi_preset
from .mimi import Mimi

__all__ = ["Mimi", "MimiConfig", "mimi_preset"]
