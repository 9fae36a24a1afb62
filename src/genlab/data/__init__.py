"""Data: sources that load and split, and the DataModule that batches them for training.

Imports are lazy: validating `data.source` must not pay for torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from genlab.data.registry import register_source, source, source_names

_LAZY = {
    "SeededBatches": "genlab.data.datamodule", "TensorDataModule": "genlab.data.datamodule",
    "Dataset": "genlab.data.sources", "DataSpec": "genlab.data.sources", "Loaded": "genlab.data.sources",
    "Split": "genlab.data.sources", "load_dataset": "genlab.data.sources",
}
__all__ = [*_LAZY, "register_source", "source", "source_names"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'genlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
