"""Serving: an OpenAI-compatible REST API for every family (`genlab serve`), and an AWS Lambda handler.

The routes and served kinds are the capabilities' (`genlab/capabilities`); this package holds what they share:
the worker and the engine that batch requests, the guard (keys, rate limits, output filters), the app.
Its names are handed out on first use, so that a capability importing `genlab.serving.server` loads no app.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"create_app": "genlab.serving.app", "serve_app": "genlab.serving.app", "lambda_handler": "genlab.serving.aws",
         "ServeConfig": "genlab.serving.config", "load_serve_config": "genlab.serving.config"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'genlab.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
