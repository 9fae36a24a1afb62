"""`genlab prepare`: a data config's inputs through its pipeline into a prepared set and a report.

`pipeline.py` runs the steps; `text.py` runs text in blocks on an engine (`engine.py`: this process or Ray
Data). The names below are imported on first use, so a Ray task that imports the per-document modules
(`stream`, `near`, `blocks`, `text`) does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cached", "load_prepared", "pipeline_of", "prepare"]


def __getattr__(name: str) -> Any:
    if name in ("prepare", "cached", "pipeline_of"):
        from genlab.prepare import pipeline

        return getattr(pipeline, name)
    if name == "load_prepared":
        from genlab.prepare.store import load_prepared

        return load_prepared
    raise AttributeError(f"module 'genlab.prepare' has no attribute {name!r}")
