"""genlab: from raw data to a trained, evaluated generative model, for every model family."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlab.version import __version__

# Imported on first use, so `genlab --help` and config checks do not pay for torch and Lightning.
_EXPORTS = {
    "fit": "genlab.api", "load": "genlab.run", "evaluate": "genlab.api", "sample_to_file": "genlab.api",
    "audit": "genlab.api", "card": "genlab.api",
    "upscale_files": "genlab.capabilities.upscale", "impute_file": "genlab.capabilities.rows",
    "score_file": "genlab.capabilities.rows", "translate_file": "genlab.capabilities.text2text",
    "latent_grid": "genlab.capabilities.latent", "bakeoff": "genlab.study.bakeoff",
    "register_family": "genlab.capabilities", "register_capability": "genlab.capabilities",
    "Capability": "genlab.capabilities", "Verb": "genlab.capabilities", "Done": "genlab.capabilities",
    "RunConfig": "genlab.config", "load_config": "genlab.config",
    "ConfigError": "genlab.errors", "GenlabError": "genlab.errors",
    "Run": "genlab.run",
}
__all__ = ["Capability", "ConfigError", "Done", "GenlabError", "Run", "RunConfig", "Verb", "__version__", "audit",
           "bakeoff", "card", "evaluate", "fit", "impute_file", "latent_grid", "load", "load_config",
           "register_capability", "register_family", "sample_to_file", "score_file", "translate_file",
           "upscale_files"]

if TYPE_CHECKING:
    from genlab.api import audit, card, evaluate, fit, sample_to_file
    from genlab.capabilities import Capability, Done, Verb, register_capability, register_family
    from genlab.capabilities.latent import latent_grid
    from genlab.capabilities.rows import impute_file, score_file
    from genlab.capabilities.text2text import translate_file
    from genlab.capabilities.upscale import upscale_files
    from genlab.config import RunConfig, load_config
    from genlab.errors import ConfigError, GenlabError
    from genlab.run import Run, load
    from genlab.study.bakeoff import bakeoff


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
