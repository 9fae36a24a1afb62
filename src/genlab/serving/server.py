"""What every route shares: the `Server` (models by name, guard, metrics, config) and the `authorize` dependency."""

from __future__ import annotations

from fastapi import Request

from genlab.serving.config import ServeConfig
from genlab.serving.guard import Guard, Refused
from genlab.serving.metrics import Metrics
from genlab.serving.models import Served


class Server:
    """What the routes share: the models by name, the guard, the metrics and the config."""

    def __init__(self, models: dict[str, Served], config: ServeConfig, metrics: Metrics) -> None:
        self.models, self.config, self.metrics = models, config, metrics
        self.guard = Guard(config)

    def model(self, name: str, kinds: tuple[str, ...], route: str) -> Served:
        """The model a request names, if it serves this route: 404 otherwise, naming what is loaded."""
        served = self.models.get(name)
        if served is None:
            raise Refused(404, f"model: {name!r} is not served here; loaded: {', '.join(self.models)}",
                          code="model_not_found")
        if served.kind not in kinds:
            raise Refused(400, f"model: {name!r} is a {served.family} model, which does not serve {route}",
                          code="invalid_request_error")
        return served


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
