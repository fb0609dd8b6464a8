"""Building blocks shared by the codec and the LM: the streaming protocol, causal convs, transformer."""

from .attention import StreamingSelfAttention
from .conv import StreamingConv1d, StreamingConvTranspose1d
from .streaming import StreamingModule, StreamingState
from .transformer import StreamingTransformer

__all__ = [
    "StreamingConv1d",
    "StreamingConvTranspose1d",
    "StreamingModule",
    "StreamingSelfAttention",
    "StreamingState",
    "StreamingTransformer",
]
