"""The real-time side: the Moshi WebSocket wire protocol (:mod:`~fullduplex.server.protocol`) and the server.

Nothing runs at import time; the server application lives in :mod:`fullduplex.server.app`.
"""

from . import protocol
from .protocol import Control, Kind, Message, OpusDecoder, OpusEncoder, ProtocolError

__all__ = ["Control", "Kind", "Message", "OpusDecoder", "OpusEncoder", "ProtocolError", "protocol"]
