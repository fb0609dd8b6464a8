"""Running the models: the streaming generator and sampling."""

from .generator import Generator
from .sampling import sample_token

__all__ = ["Generator", "sample_token"]
