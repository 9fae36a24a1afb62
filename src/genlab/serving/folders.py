"""A run directory or a bare model folder (as a container holds) -> the family's model, from safetensors only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlab.config.families import META_FILE
from genlab.errors import GenlabError

PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def model_folder(path: str | Path) -> tuple[Path, str]:
    """(model folder, default name) of a run directory or of a model folder itself."""
    path = Path(path)
    if (path / "model" / META_FILE).is_file():
        from genlab.config import load_config

        name = load_config(path / "config.yaml").name if (path / "config.yaml").is_file() else path.name
        return path / "model", name
    if (path / META_FILE).is_file():
        return path, path.parent.name if path.name == "model" else path.name
    if (path / "config.yaml").is_file():
        raise GenlabError(f"{path}: this run has no exported model yet (no model/); finish `genlab fit` first")
    raise GenlabError(f"{path}: neither a run directory nor a genlab model folder (no {META_FILE})")


def safetensors_folder(path: str | Path) -> tuple[Path, str]:
    """`model_folder`, refused when the folder holds pickled weights anywhere (unpickling runs code)."""
    folder, name = model_folder(path)
    pickled = sorted(str(p.relative_to(folder)) for pattern in PICKLES for p in folder.rglob(pattern))
    if pickled:
        raise GenlabError(f"{folder}: holds pickled weights ({', '.join(pickled)}); genlab serves safetensors only")
    return folder, name


def load_model(path: str | Path) -> tuple[Any, str]:
    """(model, default name) from a run directory or model folder; weights are read from safetensors only."""
    from genlab.config.families import family_class

    folder, name = safetensors_folder(path)
    family = json.loads((folder / META_FILE).read_text())["family"]
    fallback = None  # a run directory's eval.sampling, for a folder exported before folders kept their options
    if (Path(path) / "config.yaml").is_file():
        from genlab.config import load_config

        fallback = load_config(Path(path) / "config.yaml").eval.sampling
    return family_class(family).load(folder, fallback).eval(), name
