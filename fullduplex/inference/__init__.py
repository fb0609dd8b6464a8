"""Running the models: the streaming generator, sampling, and the file pipeline behind `fullduplex generate`."""

from .engine import Engine, EngineFull, FrameOutput, Session, SlotState
from .generator import Generator
from .offline import GenerationResult, Sampling, generate, generate_files
from .persona import Persona, PersonaCache, PersonaState
from .prompt import Schedule, Voice, build_schedule, role_tokens
from .sampling import sample_token
from .voice import load_voice

__all__ = [
    "Engine", "EngineFull", "FrameOutput", "GenerationResult", "Generator", "Persona", "PersonaCache", "PersonaState",
    "Sampling", "Schedule", "Session", "SlotState", "Voice", "build_schedule", "generate", "generate_files", "load_voice",
    "role_tokens", "sample_token",
]
