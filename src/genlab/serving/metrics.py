"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("genlab_requests", "Requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("genlab_request_latency_seconds", "Request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("genlab_time_to_first_token_seconds", "Time to the first streamed text",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("genlab_batch_size", "Sequences per decoding step, or images per sampler call",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("genlab_queue_depth", "Requests waiting or running", ["model"], registry=r)
        self.tokens = Counter("genlab_tokens_generated", "Tokens generated", ["model"], registry=r)
        self.images = Counter("genlab_images_generated", "Images generated or upscaled", ["model"], registry=r)
        self.filtered = Counter("genlab_filtered_outputs", "Outputs a filter replaced or refused",
                                ["model", "filter", "action"], registry=r)

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
