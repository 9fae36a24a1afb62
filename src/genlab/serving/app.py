"""The FastAPI app: health and metrics, the model list, errors in OpenAI's shape, and one log line per request.

The generation routes are the capabilities' (`genlab/capabilities`: text, images, speech, upscaling, tables),
each model served by its family's first capability that has a served kind. Every generation route depends on
`authorize`: the API key when keys are configured, then the identity's rate limits.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from genlab.capabilities import capability, capability_names, served_kind
from genlab.errors import GenlabError
from genlab.serving.config import ServeConfig
from genlab.serving.folders import load_model, model_folder
from genlab.serving.guard import Refused
from genlab.serving.metrics import Metrics
from genlab.serving.served import Served
from genlab.serving.server import Server, authorize, operator

log = logging.getLogger("genlab.serve")


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code or None}}


def create_app(models: dict[str, Served], config: ServeConfig | None = None, metrics: Metrics | None = None
               ) -> FastAPI:
    """An app serving already loaded models; `serve_app` loads them from run directories."""
    config = config or ServeConfig()
    server = Server(models, config, metrics or Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for served in models.values():  # graceful shutdown: what is queued or running finishes first
            served.stop(config.shutdown_seconds)

    app = FastAPI(title="genlab", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  description="OpenAI-compatible serving of genlab models: text, images, upscaling and tables.")
    app.state.server = server
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(Observe, server=server)
    _errors(app)

    @app.get("/health", tags=["operations"], dependencies=[Depends(operator("health"))])
    def health() -> JSONResponse:
        """Liveness: every model can serve, or is being restored by itself (an engine process replaced); 503
        otherwise, which a liveness probe answers by restarting the server. Counts only: it is public by default."""
        down = sum(not served.healthy for served in models.values())
        return JSONResponse({"status": "ok" if not down else "unhealthy", "models_down": down},
                            status_code=503 if down else 200)

    @app.get("/ready", tags=["operations"], dependencies=[Depends(operator("ready"))])
    def ready() -> JSONResponse:
        """Readiness: every model is loaded and its batching worker is alive, and no signal told the server to stop."""
        if server.draining:  # the load balancer takes this replica out while it still serves what it is sent
            return JSONResponse({"status": "draining"}, status_code=503)
        dead = [name for name, served in models.items() if not served.alive]
        body = {"status": "ready" if not dead else "not ready", "models": list(models), "workers_down": dead}
        return JSONResponse(body, status_code=503 if dead else 200)

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(operator("metrics"))])
    def metrics_text() -> Response:
        """Prometheus text format."""
        for name, served in models.items():
            server.metrics.queue_depth.labels(name).set(served.depth)
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"])
    def list_models(identity: str = Depends(authorize)) -> dict:
        """The served models in OpenAI's shape, with genlab's family and kind, and a text model's context in tokens
        as vLLM reports it (`max_model_len`: what lm-evaluation-harness's `max_length` must not pass)."""
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": s.created, "owned_by": "genlab",
             **({"max_model_len": s.context} if s.context is not None else {}),
             "genlab": {"family": s.family, "kind": s.kind}} for name, s in models.items()]}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(operator("docs"))])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(operator("docs"))])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="genlab API")

    kinds = [capability(name).served for name in capability_names()] + [type(s) for s in models.values()]
    routers = {id(kind.router): kind.router for kind in kinds if kind is not None and kind.router is not None}
    for router in routers.values():  # every capability's routes, once each (text and text2text share theirs)
        app.include_router(router)
    app.openapi = lambda: _openapi(app, list(models))
    return app


def _openapi(app: FastAPI, names: list[str]) -> dict:
    """FastAPI's spec, with each request's `model` listing the models this server holds."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for component in spec.get("components", {}).get("schemas", {}).values():
            field = component.get("properties", {}).get("model")
            if field is not None and names:
                field["enum"] = names
        app.openapi_schema = spec
    return app.openapi_schema


def load_served(path: str | Path, config: ServeConfig, name: str | None = None,
                observe: Callable[[str, int], None] | None = None) -> Served:
    """The model at `path` (a run directory or a model folder), behind the worker its served kind starts."""
    model, default = load_model(path)
    name = name or default
    on_batch = (lambda size: observe(name, size)) if observe else None
    return served_kind(model.config.family)(name, model, config, on_batch, folder=model_folder(path)[0])


def serve_app(paths: list[str | Path], config: ServeConfig | None = None) -> FastAPI:
    """Load each run directory (or model folder) and build the app; names come from `config.names` or the runs."""
    config = config or ServeConfig()
    if config.names and len(config.names) != len(paths):
        raise GenlabError(f"names: {len(config.names)} names for {len(paths)} models")
    names = list(config.names) or [model_folder(path)[1] for path in paths]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise GenlabError(f"{paths[i]}: a second model named {name!r}; name them in the serve config's `names`")
    metrics = Metrics()
    models: dict[str, Served] = {}
    try:
        for path, name in zip(paths, names, strict=True):
            models[name] = load_served(path, config, name, metrics.observe_batch)
    except BaseException:  # the engines already started go with the error
        for served in models.values():
            served.stop(0)
        raise
    return create_app(models, config, metrics)


def _errors(app: FastAPI) -> None:
    """Every error in OpenAI's shape, naming the field where there is one; never a traceback."""

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(err.retry_after)))} if err.retry_after is not None else None
        return JSONResponse(error_body(err.message, err.status, code=err.code), err.status, headers=headers)

    @app.exception_handler(GenlabError)
    async def genlab_error(request: Request, err: GenlabError) -> JSONResponse:
        message = str(err)
        param = message.split(":", 1)[0] if ":" in message and " " not in message.split(":", 1)[0] else None
        return JSONResponse(error_body(message, 400, param), 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"] if p != "body"]
            problems.append((".".join(loc) or "body", e["msg"]))
        message = "; ".join(f"{where}: {what}" for where, what in problems)
        return JSONResponse(error_body(message, 422, problems[0][0] if problems else None), 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(err.detail), err.status_code), err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", 500), 500)


class Observe:
    """ASGI middleware: request id, body size limit, metrics by route and status, one JSON log line per request."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.server.config.limits.max_body_bytes

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        received = 0

        async def receiving() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        try:
            if int(headers.get(b"content-length", b"0") or 0) > limit:
                raise _TooLarge
            await self.app(scope, receiving, sending)
        except _TooLarge:
            body = json.dumps(error_body(f"body: larger than the limit of {limit} bytes", 413, "body")).encode()
            await sending({"type": "http.response.start", "status": 413,
                           "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
        finally:
            identity = scope["state"].get("identity")
            if identity is not None:  # the request `authorize` counted in flight has been answered
                self.server.guard.leave(identity)
            self._record(scope, status[0], time.perf_counter() - start, request_id)

    def _record(self, scope: dict, status: int, seconds: float, request_id: str) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"  # unknown paths share one label: bounded cardinality
        m = self.server.metrics
        m.requests.labels(path, str(status)).inc()
        m.latency.labels(path).observe(seconds)
        state = scope.get("state", {})
        log.info(json.dumps({"id": request_id, "model": state.get("model"), "route": path, "status": status,
                             "latency_ms": round(seconds * 1000, 1), "batch_size": state.get("batch_size"),
                             "tokens": state.get("tokens")}))


class _TooLarge(Exception):
    pass
