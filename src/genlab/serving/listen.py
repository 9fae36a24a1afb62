"""How `genlab serve` listens: one uvicorn server on the main port and, when `ops_port` is set, on an operations
port too, with a drain on SIGTERM or SIGINT.

A load balancer (a Kubernetes Service's endpoints) goes on sending new requests for a few seconds after a
replica is told to stop. So the first signal only marks the server draining: /ready answers 503 and each
response closes its connection (a client's next request goes through the balancer again), while requests are
still served for `drain_seconds`. Then uvicorn stops accepting and lets what is in flight finish within
`shutdown_seconds`. A second signal stops at once.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from genlab.errors import GenlabError
from genlab.serving.config import ServeConfig
from genlab.serving.server import Server

OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})


def bind(config: ServeConfig) -> list[socket.socket]:
    """The main socket and the operations socket (if set), bound before the models load: a port in use fails fast."""
    if config.ops_port is not None and config.ops_port == config.port:
        raise GenlabError(f"ops_port: {config.ops_port} is also `port`; the operations port needs a port of its own")
    sockets = [_bind(config.host, config.port, "port")]
    if config.ops_port is not None:
        try:
            sockets.append(_bind(config.host, config.ops_port, "ops_port"))
        except GenlabError:
            sockets[0].close()
            raise
    return sockets


def _bind(host: str, port: int, field: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server rebinds at once, as uvicorn's
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise GenlabError(f"{field}: cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve_until_stopped(paths: list[Path], config: ServeConfig, announce: Callable[[list[str]], None]) -> None:
    """`genlab serve`: bind the ports, load the models, `announce` their names, and serve until a signal."""
    from genlab.serving.app import serve_app

    sockets = bind(config)
    try:
        app = serve_app(paths, config)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    announce(list(app.state.server.models))
    listen(app, config, sockets)


def listen(app: Any, config: ServeConfig, sockets: list[socket.socket]) -> None:
    """Serve `app` (from `serve_app`) on the sockets from `bind` until a signal stops it, draining first."""
    server: Server = app.state.server
    uv = DrainingServer(uvicorn_config(Ports(app, server), config), server, config.drain_seconds)
    uv.run(sockets=sockets)


def uvicorn_config(app: Any, config: ServeConfig) -> uvicorn.Config:
    """uvicorn's settings for the serve config. A client's address (its identity when no keys are set) is the
    connection's, unless it comes from a trusted proxy: then the nearest untrusted X-Forwarded-For entry, so a
    client cannot pick a fresh identity per request by sending the header itself. The event loop is uvloop where
    it is installed (half the time to first token at 32 streams); the parser is h11, which refuses a request head
    past 16 KB, where httptools hands the app a head of any size."""
    trusted = config.trusted_proxies
    return uvicorn.Config(app, host=config.host, port=config.port, access_log=False, log_level="warning", http="h11",
                          timeout_graceful_shutdown=config.shutdown_seconds, proxy_headers=bool(trusted),
                          forwarded_allow_ips=",".join(trusted) if trusted else None)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT starts a drain of `drain_seconds` before its shutdown."""

    def __init__(self, config: uvicorn.Config, server: Server, drain_seconds: float) -> None:
        super().__init__(config)
        self.genlab, self.drain_seconds = server, drain_seconds
        self.drain_ends: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        second = self.drain_ends is not None or self.should_exit
        super().handle_exit(sig, frame)  # records the signal, which uvicorn raises again once it has stopped
        self.genlab.draining = True
        if second:
            self.force_exit = True  # in-flight requests end with the process
        elif self.drain_seconds > 0:
            self.should_exit = False  # not yet: on_tick sets it when the drain is over
            self.drain_ends = time.monotonic() + self.drain_seconds

    async def on_tick(self, counter: int) -> bool:
        if self.drain_ends is not None:
            if not self._announced:  # here, not in the signal handler: a write there may interrupt another one
                self._announced = True
                print(f"draining for {self.drain_seconds:g} s: /ready answers 503, requests are still served "
                      "(a second signal stops at once)", file=sys.stderr, flush=True)
            if time.monotonic() >= self.drain_ends:
                self.should_exit = True
        return await super().on_tick(counter)


class Ports:
    """ASGI: the operations port answers /health, /ready and /metrics alone; while draining, every response
    closes its connection."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server
        self.ops_port = server.config.ops_port

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.ops_port is not None and (scope.get("server") or (None, None))[1] == self.ops_port \
                and scope["path"] not in OPS_PATHS:
            return await _not_here(scope["path"], send)
        if self.server.draining:
            send = _closing(send)
        await self.app(scope, receive, send)


def _closing(send: Any) -> Any:
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return sending


async def _not_here(path: str, send: Any) -> None:
    from genlab.serving.app import error_body

    body = json.dumps(error_body(f"{path}: the operations port serves {', '.join(sorted(OPS_PATHS))} only; "
                                 "the API is on the main port", 404)).encode()
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
