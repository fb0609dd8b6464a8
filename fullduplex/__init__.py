"""fullduplex: full-duplex spoken dialogue models (Moshi, J-Moshi, Human-1) in one package.

>>> import fullduplex as fd
>>> mimi = fd.load_mimi("tokenizer-e351c8d8-checkpoint125.safetensors")
>>> mimi, lm, tokenizer = fd.load_demo()   # the small demo model bundled with the package
"""

from .checkpoint import load_lm, load_mimi, save_lm, save_mimi, save_mlx
from .codec import Mimi, MimiConfig
from .demo import load_demo
from .inference import Generator
from .lm import LMConfig, LMModel, LMOutput
from .lm.quantize import quantize

__version__ = "0.1.0"
__all__ = [
    "Generator", "LMConfig", "LMModel", "LMOutput", "Mimi", "MimiConfig", "__version__", "load_demo", "load_lm",
    "load_mimi", "quantize", "save_lm", "save_mimi", "save_mlx",
]
