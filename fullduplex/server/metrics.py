"""The text of ``GET /api/metrics`` (Prometheus exposition format, version 0.0.4).

Every series has ``# HELP`` and ``# TYPE`` lines. Model step time comes twice: ``fullduplex_step_seconds``, a
summary (p50 / p95 / p99 of the engine's last 1000 steps, as before) and ``fullduplex_step_duration_seconds``, a
histogram (cumulative over the server's life, aggregatable across servers; the 0.08 s bucket is one frame, the
real-time budget). The histogram is fed at each scrape from the engine's last 1000 step times, so a scraper that
polls at least every 80 s (1000 frames) sees every step; steps older than that are not counted.

With ``prometheus_client`` installed (``pip install fullduplex[metrics]``) the text is rendered by it; otherwise
by :func:`render_text`, which writes the same text (same names, order, number formatting; tested).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Upper bounds of the step-time histogram, seconds (+Inf is added); 0.08 s = one 12.5 Hz frame.
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.4, 1.0)
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Family:
    """One metric: its name, type, help text and samples ``(sample name, labels, value)``."""

    name: str
    kind: str  # gauge | counter | summary | histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @property
    def header(self) -> str:
        """The name on the HELP / TYPE lines: a counter's carries ``_total`` in format 0.0.4."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


@dataclass
class StepHistogram:
    """Cumulative step-time histogram, fed from the engine's window of recent step times."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))  # per bucket, +Inf last
    total: float = 0.0
    seen: int = 0  # engine.steps at the last update

    def update(self, steps: int, recent: tuple[float, ...]) -> None:
        """Observe the steps run since the last update (at most the ``recent`` ones the engine still holds)."""
        new = min(max(steps - self.seen, 0), len(recent))
        for seconds in recent[len(recent) - new :]:
            self.counts[next((i for i, b in enumerate(STEP_BUCKETS) if seconds <= b), len(STEP_BUCKETS))] += 1
            self.total += seconds
        self.seen = steps


_histograms: weakref.WeakKeyDictionary[Any, StepHistogram] = weakref.WeakKeyDictionary()


def _quantiles(family: Family, recent: list[float] | tuple[float, ...], labels: dict[str, str]) -> None:
    ordered = sorted(recent)
    for q in QUANTILES:
        value = ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan
        family.samples.append((family.name, {**labels, "quantile": str(q)}, value))


def families(server: Any) -> list[Family]:
    """The metrics of a running :class:`~fullduplex.server.app.Server`: its engines together, its counters and
    prompt caches, then each engine (one per device, ``--devices``) with ``engine`` and ``device`` labels."""
    pool = server.pool
    recents = [tuple(lane.engine.step_times) for lane in pool.lanes]  # C-level copies: model threads append
    histograms = []
    for lane, recent in zip(pool.lanes, recents, strict=True):
        histogram = _histograms.setdefault(lane.engine, StepHistogram())
        histogram.update(lane.engine.steps, recent)
        histograms.append(histogram)
    cache_bytes, cache_entries, cache_hits, cache_misses = pool.persona_cache()
    counts = server.counters()

    def one(name: str, kind: str, help: str, value: float) -> Family:
        sample = f"{name}_total" if kind == "counter" else name
        return Family(name, kind, help, [(sample, {}, float(value))])

    out = [
        one("fullduplex_sessions", "gauge", "Live conversations.", pool.active),
        one("fullduplex_sessions_max", "gauge", "Conversation slots (--max-sessions on every device).",
            pool.max_sessions),
        one("fullduplex_steps", "counter", "Model steps run (one frame of every live conversation each).", pool.steps),
        one("fullduplex_steps_behind", "counter", "Steps that took longer than one frame (80 ms).", counts["behind"]),
        one("fullduplex_sessions_refused", "counter", "Connections refused because every slot was busy.",
            counts["refused"]),
        one("fullduplex_session_errors", "counter", "Conversations ended by an error.", counts["errors"]),
        one("fullduplex_sessions_paced", "counter",
            "Times a session's socket was left unread (its audio or message rate over a limit).", counts["paced"]),
        one("fullduplex_persona_cache_bytes", "gauge", "Prompt cache: bytes held.", cache_bytes),
        one("fullduplex_persona_cache_entries", "gauge", "Prompt cache: entries held.", cache_entries),
        one("fullduplex_persona_cache_hits", "counter", "Prompt cache: hits.", cache_hits),
        one("fullduplex_persona_cache_misses", "counter", "Prompt cache: misses.", cache_misses),
    ]
    summary = Family("fullduplex_step_seconds", "summary", "Model step time over the last 1000 steps (of every engine).")
    _quantiles(summary, [t for recent in recents for t in recent], {})
    out.append(summary)
    name = "fullduplex_step_duration_seconds"
    hist = Family(name, "histogram", "Model step time, cumulative (fed at each scrape from the last 1000 steps).")
    running = 0
    counts = [sum(h.counts[i] for h in histograms) for i in range(len(STEP_BUCKETS) + 1)]
    for bound, count in zip((*STEP_BUCKETS, math.inf), counts, strict=True):
        running += count
        hist.samples.append((f"{name}_bucket", {"le": number(bound)}, float(running)))
    hist.samples += [(f"{name}_count", {}, float(running)), (f"{name}_sum", {}, sum(h.total for h in histograms))]
    out.append(hist)
    labels = [{"engine": str(i), "device": lane.device} for i, lane in enumerate(pool.lanes)]
    for suffix, kind, help, value in (
        ("sessions", "gauge", "Live conversations on this engine.", lambda lane: lane.engine.active),
        ("sessions_max", "gauge", "Conversation slots of this engine.", lambda lane: lane.engine.max_sessions),
        ("steps", "counter", "Model steps run by this engine.", lambda lane: lane.engine.steps),
        ("steps_behind", "counter", "Steps of this engine longer than one frame.", lambda lane: lane.behind),
    ):
        family = Family(f"fullduplex_engine_{suffix}", kind, help)
        sample = f"{family.name}_total" if kind == "counter" else family.name
        family.samples += [(sample, label, float(value(lane))) for label, lane in zip(labels, pool.lanes, strict=True)]
        out.append(family)
    per_engine = Family("fullduplex_engine_step_seconds", "summary", "Model step time of this engine (last 1000 steps).")
    for label, recent in zip(labels, recents, strict=True):
        _quantiles(per_engine, recent, label)
    out.append(per_engine)
    return out


def number(value: float) -> str:
    """A sample value as Prometheus (Go) writes it: ``+Inf``, ``NaN``, ``5.0``, ``1.2e+07`` (an exponent once
    the integer part has more than 6 digits)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def render_text(found: list[Family]) -> str:
    """The exposition text of ``found``, written by hand (no ``prometheus_client``)."""
    lines = []
    for family in found:
        lines += [f"# HELP {family.header} {family.help}", f"# TYPE {family.header} {family.kind}"]
        for sample, labels, value in family.samples:
            tags = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as prometheus_client: by name
            lines.append(f"{sample}{{{tags}}} {number(value)}" if tags else f"{sample} {number(value)}")
    return "\n".join(lines) + "\n"


def render_prometheus(found: list[Family]) -> str:
    """The exposition text of ``found``, written by ``prometheus_client`` (ImportError when not installed)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import Metric

    class Collector:
        def collect(self) -> Iterator[Metric]:
            for family in found:
                metric = Metric(family.name, family.help, family.kind)
                for sample, labels, value in family.samples:
                    metric.add_sample(sample, labels, value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry).decode("utf-8")


def metrics_text(server: Any) -> str:
    """``GET /api/metrics``: through ``prometheus_client`` when installed, else the hand-written text."""
    found = families(server)
    try:
        return render_prometheus(found)
    except ImportError:
        return render_text(found)
