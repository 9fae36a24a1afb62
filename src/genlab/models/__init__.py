"""Model families, one file each, all implementing `GenerativeModel`; looked up by name in the registry.

This package imports nothing heavy itself: `genlab.config.families` is pydantic-free and torch-free,
and the family classes are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from genlab.config.families import family_class, family_config, family_names, family_sampling

_LAZY = {"GenerativeModel": "genlab.models.base", "Diffusion": "genlab.models.diffusion",
         "Transformer": "genlab.models.transformer", "Graph": "genlab.models.protocol"}
__all__ = ["Diffusion", "GenerativeModel", "Graph", "Transformer", "family_class", "family_config", "family_names",
           "family_sampling"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'genlab.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
