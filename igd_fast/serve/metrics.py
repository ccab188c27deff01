"""The service's Prometheus metrics, in a registry of its own (one per application):
requests by path and status, request latency, micro-batch sizes and scoring time, errors
by reason, images waiting for the model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("igd_fast_requests_total", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram("igd_fast_request_duration_seconds", "time from request to response", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("igd_fast_batch_size", "images per forward pass (micro-batch)",
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.batch_seconds = Histogram("igd_fast_batch_duration_seconds", "scoring time of one micro-batch",
                                       buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.errors = Counter("igd_fast_errors_total", "requests refused or failed, by reason", ["reason"], registry=r)
        self.waiting = Gauge("igd_fast_queue_images", "images waiting for the model worker", registry=r)

    def batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
