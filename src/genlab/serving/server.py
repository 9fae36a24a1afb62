"""What every route shares: the `Server` (models by name, guard, metrics, config), the `authorize` dependency, and
`run_job`, which queues a request on its model's worker."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from fastapi import Request

from genlab.errors import GenlabError
from genlab.serving.config import ServeConfig
from genlab.serving.guard import Guard, Refused
from genlab.serving.metrics import Metrics
from genlab.serving.served import Served
from genlab.serving.workers import QueueFull


class Server:
    """What the routes share: the models by name, the guard, the metrics and the config."""

    def __init__(self, models: dict[str, Served], config: ServeConfig, metrics: Metrics) -> None:
        self.models, self.config, self.metrics = models, config, metrics
        self.guard = Guard(config)

    def model(self, name: str, kind: type[Served], route: str) -> Served:
        """The model a request names, if it is served by this route's kind: 404 otherwise, naming what is loaded."""
        served = self.models.get(name)
        if served is None:
            raise Refused(404, f"model: {name!r} is not served here; loaded: {', '.join(self.models)}",
                          code="model_not_found")
        if not isinstance(served, kind):
            raise Refused(400, f"model: {name!r} is a {served.family} model, which does not serve {route}",
                          code="invalid_request_error")
        return served


def served_for(request: Request, name: str, kind: type[Served], route: str) -> tuple[Server, Any]:
    """The server and the model a request names (checked against the route's kind), noted for the log line."""
    server: Server = request.app.state.server
    served = server.model(name, kind, route)
    request.state.model = served.name
    return server, served


async def run_job(served: Served, key: Any, items: list[Any], request: Request) -> list[Any]:
    """Queue a job on the model's worker and wait for it; 503 when the queue is full, 400 for a bad input."""
    try:
        future: Future = served.submit(key, items)
    except QueueFull:
        raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded") from None
    try:
        out = await asyncio.wrap_future(future)
    except GenlabError:
        raise
    except (ValueError, KeyError, TypeError) as err:  # a model that rejects the input, in its own words
        raise GenlabError(f"input: {err}") from None
    request.state.batch_size = getattr(future, "batch_size", None)
    return out


def limit(what: str, value: int, most: int, unit: str = "") -> None:
    """A 400 when a request asks for more than the serve config allows ("n: 9 images; the limit is 8")."""
    if value > most:
        raise Refused(400, f"{what}: {value}{' ' + unit if unit else ''}; the limit is {most}", code="invalid_value")


def authorize(request: Request) -> str:
    """The caller's identity (API key or address) after the key check, its rate limits and its requests in
    flight (counted until the response, streamed or not, has been sent: `app.Observe` lets it go); raises Refused."""
    server: Server = request.app.state.server
    client = request.client.host if request.client else "unknown"
    identity = server.guard.identify(request.headers.get("authorization"), client)
    server.guard.admit(identity)
    server.guard.enter(identity)
    request.state.identity = identity
    return identity


def operator(endpoint: str):
    """A dependency for an operations endpoint: open when the server has no keys or lists it in `public`, else
    it needs a key (no rate limit: health checks poll)."""

    def check(request: Request) -> None:
        server: Server = request.app.state.server
        if endpoint not in server.config.public:
            server.guard.identify(request.headers.get("authorization"), "operator")

    return check
