"""Errors that carry a message meant for the user; the CLI prints them on one line and exits non-zero."""


class FullduplexError(Exception):
    """Base class of errors whose message says what went wrong and what to do."""


class CheckpointError(FullduplexError, ValueError):
    """A checkpoint could not be found, or does not match the model it is loaded into."""


class AudioError(FullduplexError, ValueError):
    """An audio file could not be read or holds unusable samples."""
