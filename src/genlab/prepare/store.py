"""The prepared set on disk (open formats) and back: safetensors for images, JSONL for text, parquet for tables.

    DIR/prepared.json           modality, class names, counts per split, the steps run, table scaling
    DIR/{train,val,test}.*      the items of each split (text: {split}-NNNNN.jsonl shards, listed in the manifest
                                with their sizes and sha256)
    DIR/weights.json            class-balanced sampling weights per split (labels.weights)
    DIR/removed.jsonl           every item a step removed: step, reason, where (file, file:line, file:row)
    DIR/data_report.{json,html}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.prepare.kinds import SPLITS, kind_of, split_files
from genlab.run import PREPARED_MANIFEST

log = logging.getLogger("genlab")
MANIFEST = PREPARED_MANIFEST
REMOVED = "removed.jsonl"


# data fields that change how prepare runs or how fit reads the set, not the set: not in its fingerprint
TRAINING_ONLY = {"prepared", "engine", "address", "blocks", "streaming", "stream_above_mb", "chunks_url"}


def fingerprint(data) -> str:
    """The data config (less `prepared`) plus every input file's name, size and mtime: a changed input, a new key."""
    from genlab.prepare.read import files_under
    from genlab.version import __version__

    parts = [json.dumps(data.model_dump(mode="json", exclude=TRAINING_ONLY), sort_keys=True), __version__]
    if data.path is not None:
        root = Path(data.path).expanduser()
        for f in files_under(root) if root.exists() else []:
            stat = f.stat()
            parts.append(f"{f.relative_to(root) if root.is_dir() else f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cache_root() -> Path:
    """What genlab keeps between runs: GENLAB_CACHE, default ~/.cache/genlab."""
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab"))


def cache_folder(data) -> Path:
    """Where `fit` keeps the prepared set of `data`: the cache's prepared/<fingerprint>."""
    return cache_root() / "prepared" / fingerprint(data)


def summary(folder: Path) -> str:
    """One line: how many items were read, what the steps removed or changed and why, what each split holds."""
    manifest = json.loads((folder / MANIFEST).read_text())
    splits = ", ".join(f"{n} {s}" for s, n in manifest["splits"].items())
    return f"read {manifest['read']}; {'; '.join(reasons(manifest['steps'])) or 'nothing removed'}; {splits}"


def reasons(steps: list[dict]) -> list[str]:
    """Each step's reasons for removing or changing items, with a count and the first example."""
    return [f"{step['step']}: {reason}: {n}, e.g. {step['examples'][reason][0]}" for step in steps
            for reason, n in step["reasons"].items()]


def text_records(folder: Path, split: str) -> list[dict]:
    """A text split's records ({"text", "where"} and "continues" for a piece of one long file), in order."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [json.loads(line) for path in split_files(folder, manifest, split)
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_prepared(path: str | Path):
    """A prepared folder as a source's `Loaded`, with its own split (`parts`)."""

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise GenlabError(f"data.prepared: {path} holds no {MANIFEST}; `genlab prepare CONFIG --out {path}` writes one")
    manifest = json.loads((path / MANIFEST).read_text())
    notes = [f"prepared by genlab prepare: {path} ({summary(path)})"]
    weights = None
    if (path / "weights.json").is_file():
        per_split = json.loads((path / "weights.json").read_text())
        weights = torch.tensor([w for s in SPLITS for w in per_split[s]], dtype=torch.float64)
        notes.append("class-balanced sampling weights (weights.json)")
    kind = kind_of(manifest["modality"])
    if kind is None:
        raise GenlabError(f"data.prepared: {path} holds {manifest['modality']} items, which this genlab cannot read")
    return kind.load(path, manifest, notes, weights)
