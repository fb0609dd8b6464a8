"""Running the models: the streaming generator, sampling, and the file pipeline behind `fullduplex generate`."""

from .engine import Engine, EngineFull, FrameOutput, Session
from .generator import Generator
from .offline import GenerationResult, Sampling, generate, generate_files
from .sampling import sample_token

__all__ = [
    "Engine", "EngineFull", "FrameOutput", "GenerationResult", "Generator", "Sampling", "Session", "generate",
    "generate_files", "sample_token",
]
