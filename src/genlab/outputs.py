"""Samples to files, whatever the modality: image tensors -> a PNG grid, texts -> a plain-text file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genlab.images import save_grid

SUFFIX = {"image": ".png", "text": ".txt"}
TEXT_SEPARATOR = "\n\n" + "-" * 40 + "\n\n"  # between samples in a .txt file


def save_samples(samples: Any, path: str | Path) -> Path:
    """Write `samples` (an image batch, or a list of strings) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(samples, list):
        path.write_text(TEXT_SEPARATOR.join(samples) + "\n")
        return path
    return save_grid(samples, path, scale=4)
