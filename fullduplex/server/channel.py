"""Frames between the model process and the I/O workers, through shared memory.

The model process steps every live conversation once per 80 ms frame; I/O worker processes own the sockets and the
Ogg/Opus work (see ``workers.py``). What crosses between them per session and frame is small and fixed in size:
one frame of the user's PCM in, one frame of the model's PCM and its tokens out. :class:`SlotChannel` holds, for
every engine slot, two single-producer single-consumer rings of such frames in one ``multiprocessing``
shared-memory block, so a frame crosses with two memory copies and no pickling, no syscall and no lock:

- input ring (the worker writes, the model reads): ``in_frames`` frames of ``frame_size`` float32 samples;
- output ring (the model writes, the worker reads): ``out_frames`` frames of PCM, ``tokens`` int64 and the text
  token (or none) each.

Each ring has a write and a read counter (int64, only ever increased, each by its own side). A side writes the
frame's data first and then its counter, and reads the other side's counter before the data, so a reader never sees
a frame before it is whole (x86-64 keeps stores in program order; the counters are aligned 8-byte words). A full
ring refuses the write (the caller decides: the worker holds its audio back, the model drops an output frame and
counts it). The counters of a slot are zeroed by the model process when it gives the slot to a new session, before
the worker learns the slot's number.
"""

from __future__ import annotations

from multiprocessing import shared_memory

import numpy as np

IN_WRITE, IN_READ, OUT_WRITE, OUT_READ, DROPPED = range(5)


class SlotChannel:
    """Shared-memory frame rings for ``slots`` sessions (see the module docstring). ``create=True`` allocates the
    block (the model process); workers attach with ``SlotChannel.attach(channel.spec)``."""

    def __init__(
        self, slots: int, frame_size: int, tokens: int, in_frames: int = 8, out_frames: int = 25,
        name: str | None = None, create: bool = True,
    ) -> None:
        if min(slots, frame_size, tokens, in_frames, out_frames) < 1:
            raise ValueError("SlotChannel sizes must all be at least 1")
        self.slots, self.frame_size, self.tokens = slots, frame_size, tokens
        self.in_frames, self.out_frames = in_frames, out_frames
        shapes = [
            ("counters", (slots, 8), np.int64),  # IN_WRITE, IN_READ, OUT_WRITE, OUT_READ, DROPPED, (spare)
            ("out_tokens", (slots, out_frames, tokens), np.int64),
            ("out_text", (slots, out_frames), np.int64),  # -1: no text token
            ("in_pcm", (slots, in_frames, frame_size), np.float32),
            ("out_pcm", (slots, out_frames, frame_size), np.float32),
        ]
        size = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in shapes)
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        self._owner = create
        offset = 0
        for field, shape, dtype in shapes:
            array = np.ndarray(shape, dtype=dtype, buffer=self._shm.buf, offset=offset)
            setattr(self, field, array)
            offset += array.nbytes
        if create:
            self.counters[:] = 0

    @property
    def spec(self) -> dict:
        """What a worker needs to attach: pass it to :meth:`attach` (picklable)."""
        return {"slots": self.slots, "frame_size": self.frame_size, "tokens": self.tokens,
                "in_frames": self.in_frames, "out_frames": self.out_frames, "name": self._shm.name}

    @classmethod
    def attach(cls, spec: dict) -> SlotChannel:
        return cls(**spec, create=False)

    @property
    def nbytes(self) -> int:
        return self._shm.size

    def close(self) -> None:
        """Detach; the creating side also frees the block."""
        for field in ("counters", "out_tokens", "out_text", "in_pcm", "out_pcm"):
            setattr(self, field, None)  # views must go before the buffer can be released
        self._shm.close()
        if self._owner:
            self._shm.unlink()

    # --- the model process ---------------------------------------------------------------------------------
    def clear(self, slot: int) -> None:
        """Empty both rings of ``slot`` (the model process, before handing the slot to a new session)."""
        self.counters[slot] = 0

    def input_ready(self, slot: int) -> int:
        """Whole input frames waiting in ``slot``'s ring."""
        c = self.counters[slot]
        return int(c[IN_WRITE] - c[IN_READ])

    def read_input(self, slot: int) -> np.ndarray | None:
        """The oldest input frame of ``slot`` (a copy, float32 [frame_size]), or None when the ring is empty."""
        c = self.counters[slot]
        read = int(c[IN_READ])
        if int(c[IN_WRITE]) == read:
            return None
        frame = self.in_pcm[slot, read % self.in_frames].copy()
        c[IN_READ] = read + 1
        return frame

    def write_output(self, slot: int, pcm: np.ndarray, tokens: np.ndarray, text: int | None = None) -> bool:
        """Append one output frame (pcm float32 [frame_size], tokens int64 [tokens], the text token or None); False
        (and counted in ``dropped``) when the worker has not read the last ``out_frames`` frames."""
        c = self.counters[slot]
        write = int(c[OUT_WRITE])
        if write - int(c[OUT_READ]) >= self.out_frames:
            c[DROPPED] += 1
            return False
        index = write % self.out_frames
        self.out_pcm[slot, index] = pcm
        self.out_tokens[slot, index] = tokens
        self.out_text[slot, index] = -1 if text is None else text
        c[OUT_WRITE] = write + 1
        return True

    def dropped(self, slot: int) -> int:
        """Output frames of ``slot`` dropped because its worker did not keep up."""
        return int(self.counters[slot, DROPPED])

    # --- the worker ----------------------------------------------------------------------------------------
    def input_space(self, slot: int) -> int:
        """Input frames ``slot``'s ring can still take."""
        c = self.counters[slot]
        return self.in_frames - int(c[IN_WRITE] - c[IN_READ])

    def write_input(self, slot: int, frame: np.ndarray) -> bool:
        """Append one input frame (float32 [frame_size]); False when the ring is full."""
        c = self.counters[slot]
        write = int(c[IN_WRITE])
        if write - int(c[IN_READ]) >= self.in_frames:
            return False
        self.in_pcm[slot, write % self.in_frames] = frame
        c[IN_WRITE] = write + 1
        return True

    def read_outputs(self, slot: int) -> list[tuple[np.ndarray, int | None, np.ndarray]]:
        """Every output frame of ``slot`` not read yet, oldest first: (pcm [frame_size], text token or None,
        tokens [tokens]), copies."""
        c = self.counters[slot]
        read, write = int(c[OUT_READ]), int(c[OUT_WRITE])
        out = []
        for n in range(read, write):
            index = n % self.out_frames
            text = int(self.out_text[slot, index])
            out.append((self.out_pcm[slot, index].copy(), None if text < 0 else text, self.out_tokens[slot, index].copy()))
        c[OUT_READ] = write
        return out
