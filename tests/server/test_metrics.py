"""``/api/metrics`` text: prometheus_client and the hand-written fallback give the same text, every series has a
TYPE line, the step-time histogram is cumulative across scrapes."""

from __future__ import annotations

import math
import sys
from collections import deque
from types import SimpleNamespace

import pytest

from fullduplex.server import metrics as M

parser = pytest.importorskip("prometheus_client.parser", reason="pip install fullduplex[metrics]")

OLD_SERIES = ("fullduplex_sessions", "fullduplex_sessions_max", "fullduplex_steps_total", "fullduplex_steps_behind_total",
              "fullduplex_sessions_refused_total", "fullduplex_session_errors_total", "fullduplex_persona_cache_bytes",
              "fullduplex_persona_cache_entries", "fullduplex_persona_cache_hits_total",
              "fullduplex_persona_cache_misses_total", "fullduplex_step_seconds")


class Cache:
    nbytes, hits, misses = 123_456_789, 4, 2

    def __len__(self) -> int:
        return 3


class Engine:  # what the metrics read of fullduplex.inference.Engine
    def __init__(self) -> None:
        self.step_times: deque[float] = deque(maxlen=1000)
        self.steps, self.active, self.max_sessions, self.personas = 0, 2, 8, Cache()


class Pool:  # what the metrics read of fullduplex.server.pool.EnginePool (one engine here)
    def __init__(self, engine: Engine) -> None:
        self.lanes = [SimpleNamespace(engine=engine, device="cpu", behind=1)]

    active = property(lambda self: sum(lane.engine.active for lane in self.lanes))
    max_sessions = property(lambda self: sum(lane.engine.max_sessions for lane in self.lanes))
    steps = property(lambda self: sum(lane.engine.steps for lane in self.lanes))

    def persona_cache(self) -> tuple[int, int, int, int]:
        cache = self.lanes[0].engine.personas
        return cache.nbytes, len(cache), cache.hits, cache.misses


def fake_server() -> SimpleNamespace:
    engine = Engine()
    return SimpleNamespace(engine=engine, pool=Pool(engine),
                           counters=lambda: {"behind": 1, "refused": 5, "errors": 0, "paced": 0})


def run_steps(server, *seconds: float) -> None:
    for s in seconds:
        server.engine.step_times.append(s)
        server.engine.steps += 1


def parsed(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def test_both_renderers_write_the_same_typed_text():
    server = fake_server()
    empty = M.families(server)  # no step yet: quantiles NaN, histogram all zero
    assert M.render_prometheus(empty) == M.render_text(empty)
    run_steps(server, 0.004, 0.03, 0.07, 0.09, 2.5)
    found = M.families(server)
    text = M.render_text(found)
    assert M.render_prometheus(found) == text
    lines = text.splitlines()
    for line in lines:  # every sample's family has HELP and TYPE lines before it
        if not line.startswith("#"):
            family = next(f for f in found if any(line.startswith(s[0]) for s in f.samples))
            assert lines.index(f"# TYPE {family.header} {family.kind}") < lines.index(line)
    families = parsed(text)
    assert all(f.type != "unknown" for f in families.values())
    samples = {s.name for f in families.values() for s in f.samples}
    assert set(OLD_SERIES) <= samples  # the names dashboards and benchmarks read
    assert "fullduplex_persona_cache_bytes 1.23456789e+08" in lines
    assert 'fullduplex_step_seconds{quantile="0.99"} 2.5' in lines
    assert 'fullduplex_engine_step_seconds{device="cpu",engine="0",quantile="0.99"} 2.5' in lines
    assert 'fullduplex_engine_steps_total{device="cpu",engine="0"} 5.0' in lines


def test_step_histogram_is_cumulative_over_scrapes():
    server = fake_server()
    run_steps(server, 0.004, 0.03, 0.07)
    M.families(server)
    run_steps(server, 0.09, 2.5)
    hist = parsed(M.render_text(M.families(server)))["fullduplex_step_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert list(buckets) == [M.number(b) for b in M.STEP_BUCKETS] + ["+Inf"]
    assert buckets["0.005"] == 1 and buckets["0.03"] == 2 and buckets["0.08"] == 3 and buckets["0.1"] == 4
    assert buckets["1.0"] == 4 and buckets["+Inf"] == 5
    values = list(buckets.values())
    assert values == sorted(values)
    total = {s.name: s.value for s in hist.samples}
    assert total["fullduplex_step_duration_seconds_count"] == 5
    assert total["fullduplex_step_duration_seconds_sum"] == pytest.approx(0.004 + 0.03 + 0.07 + 0.09 + 2.5)
    M.families(server)  # a scrape with no new step adds nothing
    again = parsed(M.render_text(M.families(server)))["fullduplex_step_duration_seconds"]
    assert {s.name: s.value for s in again.samples}["fullduplex_step_duration_seconds_count"] == 5


def test_fallback_when_prometheus_client_is_missing(monkeypatch):
    server = fake_server()
    run_steps(server, 0.05)
    with_client = M.metrics_text(server)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` raises ImportError
    with pytest.raises(ImportError):
        M.render_prometheus(M.families(server))
    without = M.metrics_text(server)
    assert without == with_client and "# TYPE fullduplex_step_duration_seconds histogram" in without


@pytest.mark.parametrize(("value", "text"), [(5, "5.0"), (0.08, "0.08"), (12_345_678, "1.2345678e+07"),
                                             (math.inf, "+Inf"), (math.nan, "NaN"), (1e-7, "1e-07")])
def test_numbers_as_prometheus_writes_them(value, text):
    from prometheus_client.utils import floatToGoString

    assert M.number(value) == text == floatToGoString(value)
