"""Samples to files, whatever the modality: image tensors -> a PNG grid, texts -> a plain-text file,
table rows (a DataFrame) -> CSV (or parquet, by the suffix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genlab.images import save_grid

SUFFIX = {"image": ".png", "text": ".txt", "table": ".csv"}
TEXT_SEPARATOR = "\n\n" + "-" * 40 + "\n\n"  # between samples in a .txt file


def save_samples(samples: Any, path: str | Path) -> Path:
    """Write `samples` (an image batch, or a list of strings) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(samples, list):
        path.write_text(TEXT_SEPARATOR.join(samples) + "\n")
        return path
    if hasattr(samples, "to_csv"):  # a DataFrame of rows
        return write_table(samples, path)
    return save_grid(samples, path, scale=4)


def write_table(frame: Any, path: str | Path) -> Path:
    """A DataFrame to .csv or .parquet (by the suffix), written whole then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
