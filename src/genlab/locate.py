"""Families name their parts as "module:attribute" strings, so that naming one imports nothing heavy."""

from __future__ import annotations

import importlib
from typing import Any


def locate(path: str) -> Any:
    """The attribute a "module:attribute" string names, its module imported on first use."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
