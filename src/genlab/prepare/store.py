"""The prepared set on disk (open formats) and back: safetensors for images, JSONL for text, parquet for tables.

    DIR/prepared.json           modality, class names, counts per split, the steps run, table scaling
    DIR/{train,val,test}.*      the items of each split
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

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from genlab.errors import GenlabError
from genlab.run import PREPARED_MANIFEST

log = logging.getLogger("genlab")
SPLITS = ("train", "val", "test")
MANIFEST = PREPARED_MANIFEST
REMOVED = "removed.jsonl"


def write_split(out: Path, modality: str, split: str, values, labels: list[int] | None, wheres: list[str]) -> None:
    if modality == "image":
        x = torch.from_numpy(np.stack(values).transpose(0, 3, 1, 2).copy()) if values else torch.zeros(0, 1, 1, 1,
                                                                                                      dtype=torch.uint8)
        tensors = {"x": x.to(torch.uint8)}
        if labels is not None:
            tensors["y"] = torch.tensor(labels, dtype=torch.long)
        save_file(tensors, str(out / f"{split}.safetensors"), metadata={"where": json.dumps(wheres)})
    else:  # text is written as it streams (stream.write)
        values.to_parquet(out / f"{split}.parquet")


def fingerprint(data) -> str:
    """The data config (less `prepared`) plus every input file's name, size and mtime: a changed input, a new key."""
    from genlab.prepare.read import files_under
    from genlab.version import __version__

    parts = [json.dumps(data.model_dump(mode="json", exclude={"prepared"}), sort_keys=True), __version__]
    if data.path is not None:
        root = Path(data.path).expanduser()
        for f in files_under(root) if root.exists() else []:
            stat = f.stat()
            parts.append(f"{f.relative_to(root) if root.is_dir() else f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cache_folder(data) -> Path:
    """Where `fit` keeps the prepared set of `data`: GENLAB_CACHE (default ~/.cache/genlab)/prepared/<fingerprint>."""
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab")) / "prepared" / fingerprint(data)


def summary(folder: Path) -> str:
    """One line: how many items were read, what the steps removed or changed and why, what each split holds."""
    manifest = json.loads((folder / MANIFEST).read_text())
    splits = ", ".join(f"{n} {s}" for s, n in manifest["splits"].items())
    return f"read {manifest['read']}; {'; '.join(reasons(manifest['steps'])) or 'nothing removed'}; {splits}"


def reasons(steps: list[dict]) -> list[str]:
    """Each step's reasons for removing or changing items, with a count and the first example."""
    return [f"{step['step']}: {reason}: {n}, e.g. {step['examples'][reason][0]}" for step in steps
            for reason, n in step["reasons"].items()]


def load_prepared(path: str | Path):
    """A prepared folder as a source's `Loaded`, with its own split (`parts`)."""
    from genlab.data.records import Loaded

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise GenlabError(f"data.prepared: {path} holds no {MANIFEST}; `genlab prepare CONFIG --out {path}` writes one")
    manifest = json.loads((path / MANIFEST).read_text())
    modality, counts = manifest["modality"], manifest["splits"]
    notes = [f"prepared by genlab prepare: {path} ({summary(path)})"]
    parts = (counts["train"], counts["val"])
    weights = None
    if (path / "weights.json").is_file():
        per_split = json.loads((path / "weights.json").read_text())
        weights = torch.tensor([w for s in SPLITS for w in per_split[s]], dtype=torch.float64)
        notes.append("class-balanced sampling weights (weights.json)")
    if modality == "image":
        loaded = [load_file(str(path / f"{s}.safetensors")) for s in SPLITS]
        x = torch.cat([d["x"] for d in loaded if len(d["x"])]).float() / 255 * 2 - 1  # an empty split has no shape
        y = torch.cat([d["y"] for d in loaded]) if all("y" in d for d in loaded) else None
        return Loaded(x, y, manifest.get("class_names", []), notes, "image", parts, weights=weights)
    if modality == "text":
        splits = [_documents(path / f"{s}.jsonl") for s in SPLITS]
        docs = [d for split in splits for d in split]
        return Loaded(docs, notes=notes, modality="text", parts=(len(splits[0]), len(splits[1])))
    frame = pd.concat([pd.read_parquet(path / f"{s}.parquet") for s in SPLITS]).reset_index(drop=True)
    return Loaded(frame, notes=notes, modality="table", parts=parts, weights=weights)


def _documents(path: Path) -> list[str]:
    """A split's documents; the pieces of one long text file join back into one."""
    docs: list[list[str]] = []
    with path.open() as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if record.get("continues") and docs:
                    docs[-1].append(record["text"])
                else:
                    docs.append([record["text"]])
    return ["".join(d) for d in docs]
