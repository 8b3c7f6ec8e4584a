"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a dependency."""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Callable

# Latency buckets in seconds (upper bounds; +Inf is implied).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = BUCKETS):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {total}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines += [f"{self.name}_sum {self.sum:.6f}", f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    """Counters, gauges and latency histograms of one server. Thread-safe (workers add tokens)."""

    RATE_WINDOW = 10.0  # seconds over which tokens/s is measured

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.sessions_saved = 0
        self.sessions_evicted = 0
        self.sessions_restored = 0
        self.cancelled = 0
        self.timeouts = 0
        self._recent: deque[tuple[float, int]] = deque()
        self.ttft = Histogram("sinkstream_time_to_first_token_seconds",
                              "Time from a request's arrival to its first generated text")
        self.inter_token = Histogram("sinkstream_inter_token_latency_seconds",
                                     "Time between two consecutive streamed pieces of one request")
        self.request_seconds = Histogram("sinkstream_request_duration_seconds", "Time to serve a generation request")
        self.queue_wait = Histogram("sinkstream_queue_wait_seconds", "Time a request waited for a generation slot")
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help, read)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def tokens(self, generated: int, prompt: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += generated
            self.prompt_tokens += prompt
            if generated:
                self._recent.append((now, generated))

    def observe(self, histogram: Histogram, value: float) -> None:
        with self._lock:
            histogram.observe(value)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.RATE_WINDOW:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / self.RATE_WINDOW

    def render(self) -> str:
        tps = self.tokens_per_second()
        with self._lock:
            lines = ["# HELP sinkstream_requests_total Requests served, by endpoint and HTTP status",
                     "# TYPE sinkstream_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'sinkstream_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, help, value in (
                    ("sinkstream_generated_tokens_total", "Tokens sampled", self.generated_tokens),
                    ("sinkstream_prompt_tokens_total", "Prompt tokens evaluated", self.prompt_tokens),
                    ("sinkstream_sessions_saved_total", "Session states written to the state directory",
                     self.sessions_saved),
                    ("sinkstream_sessions_evicted_total", "Idle sessions moved from memory to disk",
                     self.sessions_evicted),
                    ("sinkstream_sessions_restored_total", "Sessions loaded back from disk", self.sessions_restored),
                    ("sinkstream_generations_cancelled_total", "Generations stopped because the client went away",
                     self.cancelled),
                    ("sinkstream_request_timeouts_total", "Requests stopped by the request timeout", self.timeouts)):
                lines += [f"# HELP {name} {help}", f"# TYPE {name} counter", f"{name} {value}"]
            lines += ["# HELP sinkstream_tokens_per_second Tokens sampled per second over the last "
                      f"{self.RATE_WINDOW:g} s", "# TYPE sinkstream_tokens_per_second gauge",
                      f"sinkstream_tokens_per_second {tps:.3f}"]
            for name, (help, read) in sorted(self.gauges.items()):
                lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {read():g}"]
            for h in (self.ttft, self.inter_token, self.request_seconds, self.queue_wait):
                lines += h.render()
        return "\n".join(lines) + "\n"
