"""Serving: an OpenAI-compatible REST API for every family (`genlab serve`), and an AWS Lambda handler."""

from genlab.serving.app import create_app, serve_app
from genlab.serving.aws import lambda_handler
from genlab.serving.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "create_app", "lambda_handler", "load_serve_config", "serve_app"]
