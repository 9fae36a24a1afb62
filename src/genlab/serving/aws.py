"""AWS Lambda: the same app behind API Gateway, through mangum.

The function's environment names what to serve: GENLAB_MODELS (model folders or run directories,
separated by commas) and optionally GENLAB_SERVE_CONFIG (a serve.yaml). The app is built on the
first invocation and reused while the function stays warm.
"""

from __future__ import annotations

import os
from typing import Any

from genlab.errors import GenlabError

_handler: Any = None


def lambda_handler(event: dict, context: Any) -> dict:
    """The Lambda entry point: `genlab.serving.lambda_handler`."""
    global _handler
    if _handler is None:
        from mangum import Mangum

        from genlab.serving.app import serve_app
        from genlab.serving.config import load_serve_config

        models = [p for p in os.environ.get("GENLAB_MODELS", "").split(",") if p.strip()]
        if not models:
            raise GenlabError("GENLAB_MODELS: set it to the model folders to serve, separated by commas")
        config = load_serve_config(os.environ.get("GENLAB_SERVE_CONFIG"))
        if "engine" not in config.model_fields_set:  # one request at a time per instance: a process adds cold start
            config = config.model_copy(update={"engine": "thread"})
        _handler = Mangum(serve_app(models, config), lifespan="off")
    return _handler(event, context)
