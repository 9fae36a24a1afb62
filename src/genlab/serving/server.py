"""What every route shares: the `Server` (models by name, guard, metrics, config), the `authorize` dependency, and
`run_job`, which queues a request on its model's worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any

from fastapi import Request

from genlab.errors import GenlabError
from genlab.serving.config import ServeConfig
from genlab.serving.guard import Guard, MemoryBudget, Refused
from genlab.serving.metrics import Metrics
from genlab.serving.served import Served
from genlab.serving.workers import QueueFull

log = logging.getLogger("genlab.serve")


class Server:
    """What the routes share: the models by name, the guard, the metrics and the config."""

    def __init__(self, models: dict[str, Served], config: ServeConfig, metrics: Metrics) -> None:
        self.models, self.config, self.metrics = models, config, metrics
        self.guard = Guard(config)
        self.memory = MemoryBudget(config.limits.max_memory_bytes)  # what large requests hold, across models
        self.draining = False  # told to stop: /ready answers 503 while requests are still served

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
    """Queue a job on the model's worker and wait for it, within the caller's share of the queue; 503 when the
    queue is full, 400 for an input the model refuses (its words go to the log, not to the client)."""
    server: Server = request.app.state.server
    identity = request.state.identity
    server.guard.take_share(identity, served.name, len(items), server.config.max_queue)
    try:
        try:
            future: Future = served.submit(key, items)
        except QueueFull:
            raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded") from None
        try:
            out = await unless_gone(request, asyncio.wrap_future(future))  # a job not yet started is dropped
        except GenlabError:
            raise
        except (ValueError, KeyError, TypeError):  # a model that rejects the input
            log.warning("request %s: the model refused its input", request.state.request_id, exc_info=True)
            raise Refused(400, "input: the model could not take it", code="invalid_value") from None
    finally:
        server.guard.release(identity, served.name, len(items))
    request.state.batch_size = getattr(future, "batch_size", None)
    return out


async def unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`; when the client disconnects first, cancel it and raise a 499 (the log's "client closed")."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:  # the body has been read: what comes next is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    leaving = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise Refused(499, "the client closed the request", code="client_closed")
    return task.result()


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
    """A dependency for an operations endpoint: open on the operations port (`ops_port`), and on the main port when
    the server has no keys or lists it in `public`; else it needs a key (no rate limit: health checks poll)."""

    def check(request: Request) -> None:
        server: Server = request.app.state.server
        ops = server.config.ops_port
        if ops is not None and (request.scope.get("server") or (None, None))[1] == ops:
            return
        if endpoint not in server.config.public:
            server.guard.identify(request.headers.get("authorization"), "operator")

    return check
