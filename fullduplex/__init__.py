"""fullduplex: full-duplex spoken dialogue models (Moshi, J-Moshi, Human-1) in one package.

>>> import fullduplex as fd
>>> mimi = fd.load_mimi("tokenizer-e351c8d8-checkpoint125.safetensors")
"""

from .checkpoint import load_mimi, save_mimi
from .codec import Mimi, MimiConfig

__version__ = "0.1.0"
__all__ = ["Mimi", "MimiConfig", "__version__", "load_mimi", "save_mimi"]
