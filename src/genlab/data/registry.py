"""The source registry: `data.source` name -> the function that loads it, imported on first use.

Listing built-ins as import paths keeps config validation free of torch and of every loader's
dependencies; `register_source` adds a user's own loader directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genlab.locate import locate

BUILTIN: dict[str, str] = {
    "digits": "genlab.data.sources:digits",
    "image_folder": "genlab.data.sources:image_folder",
    "photos": "genlab.data.photos:photos",
    "shapes": "genlab.data.shapes:shapes",
    "captioned_shapes": "genlab.data.captioned_shapes:captioned_shapes",
    "shapes_subject": "genlab.data.captioned_shapes:shapes_subject",
    "rendered_shapes": "genlab.data.captioned_shapes:rendered_shapes",
    "table": "genlab.data.table:table",
    "breast_cancer": "genlab.data.table:breast_cancer",
    "wine": "genlab.data.table:wine",
    "diabetes": "genlab.data.table:diabetes",
    "text": "genlab.data.text:text",
    "python_docs": "genlab.data.text:python_docs",
    "python_code": "genlab.data.text:python_code",
    "tinyshakespeare": "genlab.data.text:tinyshakespeare",
    "pairs": "genlab.data.pairs:pairs",
    "dates": "genlab.data.pairs:dates",
    "docstrings": "genlab.data.pairs:docstrings",
    "spoken_digits": "genlab.data.clips:spoken_digits",
    "audio_folder": "genlab.data.clips:audio_folder",
}
# each built-in's modality, known without loading it (`genlab prepare` streams text)
MODALITY: dict[str, str] = {
    **dict.fromkeys(("digits", "image_folder", "photos", "shapes", "captioned_shapes",
                     "shapes_subject", "rendered_shapes"), "image"),
    **dict.fromkeys(("table", "breast_cancer", "wine", "diabetes"), "table"),
    **dict.fromkeys(("text", "python_docs", "python_code", "tinyshakespeare"), "text"),
    **dict.fromkeys(("pairs", "dates", "docstrings"), "pairs"),
    **dict.fromkeys(("spoken_digits", "audio_folder"), "audio"),
}
# a user's files, by the modality `genlab prepare` reads them as: fit prepares them first
FILES: dict[str, str] = {"image_folder": "image", "text": "text", "table": "table", "audio_folder": "audio"}
# built-ins that take seconds to generate and depend on the config alone: made once per process (fit, then evaluate)
GENERATED = {"shapes", "captioned_shapes", "rendered_shapes", "docstrings", "python_code", "photos", "spoken_digits"}
_registered: dict[str, Callable] = {}


def source_names() -> list[str]:
    return sorted({*BUILTIN, *_registered})


def source(name: str) -> Callable:
    if name in _registered:
        return _registered[name]
    load = locate(BUILTIN[name])
    return (lambda cfg: _made_once(name, cfg, load)) if name in GENERATED else load


_last: dict[tuple[str, str], Any] = {}  # the last generated set, by source and data config


def _made_once(name: str, cfg: Any, load: Callable) -> Any:
    key = (name, cfg.model_dump_json())
    if key not in _last:
        _last.clear()
        _last[key] = load(cfg)
    return _last[key]


def register_source(name: str) -> Callable:
    """Decorator: `data.source: NAME` calls the decorated function with the DataConfig; it returns a `Loaded`."""

    def add(fn: Callable) -> Callable:
        if name in BUILTIN or name in _registered:
            raise ValueError(f"data source {name!r} is registered twice")
        _registered[name] = fn
        return fn

    return add
