"""The Moshi LM: config, Temporal + Depth transformers, teacher-forced forward."""

from .config import LMConfig, lm_preset
from .model import LMModel, LMOutput

__all__ = ["LMConfig", "LMModel", "LMOutput", "lm_preset"]
