"""Running the models: the streaming generator, sampling, and the file pipeline behind `fullduplex generate`."""

from .generator import Generator
from .offline import GenerationResult, Sampling, generate, generate_files
from .sampling import sample_token

__all__ = ["GenerationResult", "Generator", "Sampling", "generate", "generate_files", "sample_token"]
