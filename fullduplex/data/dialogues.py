"""Dialogue scripts: a seed → a conversation of turns between two speakers, with the places of a pause inside a
turn, of overlaps (a turn starting before the previous one ends) and of backchannels (the listener's "mm-hmm"
during the other's turn). The words come from :mod:`.dialogue_templates`; :mod:`.synth` speaks and times them.

A script has a greeting, 2 to 4 question/answer exchanges (each maybe followed by the asker's reaction) and a
closing; consecutive lines of the same speaker are merged into one turn, so turns alternate. Who opens, who
asks, and where the events fall are drawn from the seed; every script holds at least one pause, one overlap and
one backchannel.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .dialogue_templates import TEMPLATES, Templates

LANGUAGES = tuple(TEMPLATES)
MIN_BACKCHANNEL_TURN = 4  # words a turn needs for the listener to backchannel during it
MIN_PAUSE_TURN = 3  # words a turn needs for a pause inside it

_SLOT = re.compile(r"\{(\w+)\}")
_READING = re.compile(r"<([^|<>]+)\|([^|<>]+)>")


@dataclass(frozen=True)
class Token:
    """One word: ``text`` as written (alignments, transcripts), ``spoken`` as given to espeak-ng."""

    text: str
    spoken: str


@dataclass(frozen=True)
class Turn:
    """One speaker's turn. ``speaker`` 0 is the left channel, 1 the right. ``pause_after``: index of the word
    followed by a pause; ``overlap``: the turn starts before the previous one ends; ``backchannel``: the other
    speaker's words, starting during word ``backchannel_at`` of this turn."""

    speaker: int
    words: tuple[Token, ...]
    pause_after: int | None = None
    overlap: bool = False
    backchannel: tuple[Token, ...] = ()
    backchannel_at: int | None = None

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(frozen=True)
class Script:
    """A planned conversation in ``language``; ``spaced`` says whether its words are written with spaces."""

    language: str
    spaced: bool
    turns: tuple[Turn, ...]

    def lines(self) -> list[str]:
        """The written text of each turn (Japanese words joined without spaces)."""
        sep = " " if self.spaced else ""
        return [sep.join(w.text for w in t.words) for t in self.turns]


def templates(language: str) -> Templates:
    """The template set of ``language`` (``en``, ``hi``, ``ja``); ValueError for another."""
    try:
        return TEMPLATES[language]
    except KeyError:
        raise ValueError(f"no dialogue templates for language {language!r}; choose one of {', '.join(LANGUAGES)}") from None


def tokens(line: str) -> tuple[Token, ...]:
    """The words of a filled template line: split at spaces, ``<written|spoken>`` resolved."""
    out = []
    for chunk in line.split():
        out.append(Token(_READING.sub(r"\1", chunk), _READING.sub(r"\2", chunk)))
    return tuple(out)


def fill(template: str, slots: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    """``template`` with each ``{slot}`` replaced by a filler drawn from ``slots``; the same slot named twice in
    one line gets the same filler ("I think so, {name} said yes" asked about {name})."""
    chosen: dict[str, str] = {}

    def pick(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in slots:
            raise KeyError(f"template {template!r} names slot {name!r}, which has no fillers")
        if name not in chosen:
            chosen[name] = rng.choice(slots[name])
        return chosen[name]

    return _SLOT.sub(pick, template)


def plan(language: str, rng: random.Random, p_pause: float = 0.3, p_overlap: float = 0.3,
         p_backchannel: float = 0.4) -> Script:
    """A script drawn with ``rng``; the ``p_*`` are the chances of each event on an eligible turn."""
    t = templates(language)
    lines: list[tuple[int, str]] = []
    opener = rng.randrange(2)
    for i, line in enumerate(rng.choice(t.greetings)):
        lines.append((opener ^ (i % 2), fill(line, t.slots, rng)))
    for exchange in rng.sample(t.exchanges, rng.randint(2, 4)):
        asker = rng.randrange(2)
        lines.append((asker, fill(exchange.question, t.slots, rng)))
        lines.append((1 - asker, fill(rng.choice(exchange.answers), t.slots, rng)))
        if rng.random() < 0.5:
            lines.append((asker, fill(rng.choice(t.reactions), t.slots, rng)))
    closer = rng.randrange(2)
    for i, line in enumerate(rng.choice(t.closings)):
        lines.append((closer ^ (i % 2), fill(line, t.slots, rng)))

    merged: list[tuple[int, tuple[Token, ...]]] = []
    for speaker, line in lines:
        if merged and merged[-1][0] == speaker:
            merged[-1] = (speaker, merged[-1][1] + tokens(line))
        else:
            merged.append((speaker, tokens(line)))

    pauses = [i for i, (_, words) in enumerate(merged) if len(words) >= MIN_PAUSE_TURN]
    overlaps = list(range(1, len(merged)))
    backchannels = [i for i, (_, words) in enumerate(merged) if len(words) >= MIN_BACKCHANNEL_TURN]
    chosen = {
        "pause": {i for i in pauses if rng.random() < p_pause},
        "overlap": {i for i in overlaps if rng.random() < p_overlap},
        "backchannel": {i for i in backchannels if rng.random() < p_backchannel},
    }
    for kind, eligible in (("pause", pauses), ("overlap", overlaps), ("backchannel", backchannels)):
        if not chosen[kind] and eligible:  # every script shows each event at least once
            chosen[kind].add(rng.choice(eligible))

    turns = []
    for i, (speaker, words) in enumerate(merged):
        pause_after = rng.randrange(1, len(words) - 1) if i in chosen["pause"] else None
        backchannel: tuple[Token, ...] = ()
        at = None
        if i in chosen["backchannel"]:
            backchannel = tokens(rng.choice(t.backchannels))
            at = rng.randrange(1, len(words) - 2)  # never during the last two words: the reply may overlap them
        turns.append(Turn(speaker, words, pause_after, i in chosen["overlap"], backchannel, at))
    return Script(language, t.spaced, tuple(turns))
