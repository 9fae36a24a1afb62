"""genlab: from raw data to a trained, evaluated generative model, for every model family."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlab.version import __version__

# Imported on first use, so `genlab --help` and config checks do not pay for torch and Lightning.
_EXPORTS = {
    "fit": "genlab.api", "load": "genlab.run", "evaluate": "genlab.api", "sample_to_file": "genlab.api",
    "upscale_files": "genlab.api", "impute_file": "genlab.api", "score_file": "genlab.api",
    "bakeoff": "genlab.selection",
    "RunConfig": "genlab.config", "load_config": "genlab.config",
    "ConfigError": "genlab.errors", "GenlabError": "genlab.errors",
    "Run": "genlab.run",
}
__all__ = ["ConfigError", "GenlabError", "Run", "RunConfig", "__version__", "bakeoff", "evaluate", "fit",
           "impute_file", "load", "load_config", "sample_to_file", "score_file", "upscale_files"]

if TYPE_CHECKING:
    from genlab.api import evaluate, fit, impute_file, sample_to_file, score_file, upscale_files
    from genlab.config import RunConfig, load_config
    from genlab.errors import ConfigError, GenlabError
    from genlab.run import Run, load
    from genlab.selection import bakeoff


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
