"""What `genlab prepare` does differently for each modality of data: how items are read, which steps apply
and how, how they are labelled, written and loaded back. Images and tables are held in memory; text streams
through `stream.py` and only its prepared set's loading lives here. A new modality is one more `Kind`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from genlab.config.prepare import Normalize
from genlab.media.suffixes import TABLE_SUFFIXES
from genlab.prepare.dedup import deduplicate_images, deduplicate_table, image_hashes
from genlab.prepare.items import Stored, values_of, write_shards
from genlab.prepare.read import files_under, validate_images, validate_table
from genlab.prepare.record import SPLITS, Item, StepLog
from genlab.prepare.split import check_labels
from genlab.prepare.steps import (
    GREY,
    clean_images,
    clean_table,
    missing_table,
    normalize_images,
    normalize_table,
    sizes_differ,
)

if TYPE_CHECKING:  # torch is imported where a set is loaded: a Ray task that reads images does without it
    import torch

    from genlab.data.records import Loaded

Step = Callable[[Any, Any, Any, StepLog, dict], Any]  # (step config, items, data config, log, extra) -> items


class Kind:
    """One modality's items in prepare: a list of `Item`s unless a kind says otherwise."""

    name = ""
    streams = False  # read and written as a stream (text), not held in memory
    augments = False  # the augment step (data/augment.py) transforms its training batches
    files = "items"  # what `data.path` holds, for "no ... found under"

    def steps(self) -> dict[str, Step]:
        """Step name -> what runs it; a step not listed here does not apply to the modality."""
        return {}

    def item_steps(self) -> set[str]:
        """The steps that work item by item: a block of the input runs them where it is read (`items.py`)."""
        return set()

    def light_steps(self) -> set[str]:
        """Steps that read only what comes back of an item (place, label, hashes): after them, the values can stay
        spilled where they were read. None of them (the default): the kind's items come back whole."""
        return set()

    def input_files(self, root: Path) -> list[Path]:
        """The files under `data.path` that are read, sorted: their order is every item's id."""
        raise NotImplementedError

    def read_paths(self, root: Path, paths: list[Path], data: Any, log: StepLog, extra: dict) -> Any:
        """The items of some of `input_files`, in their order; what cannot be read is named in `log`."""
        raise NotImplementedError

    def joined(self, parts: list[Any], data: Any) -> Any:
        """The blocks' items as one read of everything would give them."""
        return [item for part in parts for item in part][: data.limit]

    def settle(self, extras: list[dict], data: Any) -> tuple[list[int], Any]:
        """Blocks to read again, and the data config to read them with, where blocks decided alone what depends on
        every item: by default none."""
        return [], data

    def hashed(self, items: Any, step: Any, data: Any, extra: dict) -> Any:
        """The items with the hashes `deduplicate` compares, computed where they were read."""
        return items

    def from_loaded(self, loaded: Loaded, log: StepLog, extra: dict) -> Any:
        """A built-in source's records as items: nothing to skip, but every other step applies."""
        raise NotImplementedError

    def labels(self, items: Any, data: Any) -> list[str | None]:
        return [i.label for i in items]

    def clusters(self, items: Any) -> list:
        """Near-duplicate clusters the split keeps together."""
        return [i.cluster for i in items]

    def megabytes(self, items: Any) -> float:
        return 0.0

    def captioned(self, items: Any) -> bool:
        """Whether every item carries a caption (text-to-image data)."""
        return False

    def finish(self, items: Any, data: Any) -> Any:
        """The items as they are written, whatever steps ran."""
        return items

    def write(self, out: Path, split: str, items: Any, rows: np.ndarray, labels: list, names: list[str]
              ) -> list[dict] | None:
        """Write a split's rows; returns the shards written (file, items, bytes, sha256), or None for one file."""
        raise NotImplementedError

    def preview(self, items: Any, extra: dict) -> tuple[Any, list[float], str]:
        """What the report shows: sample items, a histogram's values and its label."""
        return [], [], ""

    def load(self, path: Path, manifest: dict, notes: list[str], weights: torch.Tensor | None) -> Loaded:
        raise NotImplementedError

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        """A shard's stored values ("x") as the floats a model trains on: kinds written as shards of items."""
        raise NotImplementedError


def _check_labels(step, items, data, log: StepLog, extra: dict, kind: Kind) -> Any:
    extra["labels"] = check_labels(kind.labels(items, data), step, log)
    return items


def _augment_later(step, items, data, log: StepLog, extra: dict) -> Any:
    """Nothing to do now: fit applies it to each training batch."""
    on = [k for k, v in step.model_dump(exclude={"step"}).items() if v]
    log.notes.append(f"applied during training: {', '.join(on) or 'nothing switched on'}")
    log.kept = len(items)
    return items


class ImageKind(Kind):
    name, files = "image", "image files"
    augments = True

    def item_steps(self) -> set[str]:
        return {"clean", "normalize"}

    def light_steps(self) -> set[str]:
        return {"deduplicate", "labels", "augment"}

    def steps(self) -> dict[str, Step]:
        return {"clean": self._clean,
                "normalize": lambda step, items, data, log, extra: normalize_images(items, step, data.image_size,
                                                                                          log),
                "deduplicate": self._deduplicate,
                "labels": lambda *args: _check_labels(*args, kind=self),
                "augment": _augment_later}

    @staticmethod
    def _clean(step, items, data, log: StepLog, extra: dict) -> list[Item]:
        if step.mode is None and data.channels is not None:
            step = step.model_copy(update={"mode": "L" if data.channels == 1 else "RGB"})
        elif step.mode is None and items:  # grey data stays grey: decided here for these items, by `settle` for all
            extra["mode"] = "L" if all(i.value.mode in GREY for i in items) else "RGB"
            step = step.model_copy(update={"mode": extra["mode"]})
        return clean_images(items, step, log)

    def settle(self, extras: list[dict], data: Any) -> tuple[list[int], Any]:
        """Blocks of grey images only are read again as RGB when another block holds colour."""
        modes = [extra.get("mode") for extra in extras]
        if "RGB" in modes and "L" in modes:
            return [i for i, mode in enumerate(modes) if mode == "L"], data.model_copy(update={"channels": 3})
        return [], data

    def hashed(self, items: list[Item], step: Any, data: Any, extra: dict) -> list[Item]:
        return image_hashes(_arrays(items, data))

    @staticmethod
    def _deduplicate(step, items, data, log: StepLog, extra: dict) -> list[Item]:
        return deduplicate_images(_arrays(items, data), step, log)

    def input_files(self, root: Path) -> list[Path]:
        return files_under(root)

    def joined(self, parts: list[list[Item]], data: Any) -> list[Item]:
        items = super().joined(parts, data)
        if len({i.value.shape for i in items if isinstance(i.value, np.ndarray | Stored)}) > 1:
            raise sizes_differ()  # normalized block by block without a size, the blocks' sizes differ
        return items

    def read_paths(self, root: Path, paths: list[Path], data: Any, log: StepLog, extra: dict) -> list[Item]:
        items = validate_images(root, paths, log, data.limit, data.text_field)
        extra["sizes"] = [max(item.value.size) for item in items]  # as read: the report's histogram
        return items

    def from_loaded(self, loaded: Loaded, log: StepLog, extra: dict) -> list[Item]:
        from PIL import Image

        arrays = ((loaded.x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        names = loaded.class_names
        items = [Item(f"item {i + 1}", Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a),
                      names[int(loaded.y[i])] if loaded.y is not None and names else None,
                      None if loaded.captions is None else loaded.captions[i])
                 for i, a in enumerate(arrays)]
        extra["sizes"] = [max(item.value.size) for item in items]
        log.kept = len(items)
        return items

    def captioned(self, items: list[Item]) -> bool:
        return bool(items) and all(i.caption is not None for i in items)

    def finish(self, items: list[Item], data: Any) -> list[Item]:
        return _arrays(items, data)

    def write(self, out: Path, split: str, items: list[Item], rows: np.ndarray, labels: list, names: list[str]
              ) -> list[dict]:
        def shard(chosen: list[Item], values: list[np.ndarray]) -> tuple[dict, dict]:
            x = np.ascontiguousarray(np.stack(values).transpose(0, 3, 1, 2))
            metadata = {"where": json.dumps([i.where for i in chosen])}
            if chosen[0].caption is not None:
                metadata["captions"] = json.dumps([i.caption for i in chosen])
            return {"x": x, **_codes(chosen, names)}, metadata

        return write_shards(out, split, [items[i] for i in rows], shard)

    def preview(self, items: list[Item], extra: dict) -> tuple[Any, list[float], str]:
        samples = np.stack(values_of(items[:32])) if items else np.zeros((0, 1, 1, 1), np.uint8)
        return samples, extra["sizes"], "longest side in pixels, as read"

    def load(self, path: Path, manifest: dict, notes: list[str], weights: torch.Tensor | None) -> Loaded:
        from genlab.data.records import Loaded

        x, y, captions = load_items(self, path, manifest)
        counts = manifest["splits"]
        return Loaded(x, y, manifest.get("class_names", []), notes, self.name, (counts["train"], counts["val"]),
                      weights=weights, captions=captions)

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255 * 2 - 1


def _codes(chosen: list[Item], names: list[str]) -> dict[str, np.ndarray]:
    """{"y": class indices} when every item has a class, else nothing."""
    if not names or any(i.label is None for i in chosen):
        return {}
    return {"y": np.array([names.index(i.label) for i in chosen], dtype=np.int64)}


def _arrays(items: list[Item], data: Any) -> list[Item]:
    """Images as uint8 arrays of one size, normalized with the defaults when no normalize step made them so."""
    if items and not isinstance(items[0].value, np.ndarray | Stored):
        items = normalize_images(items, Normalize(), data.image_size, StepLog("normalize"))
    return items


class TableKind(Kind):
    name, files = "table", "tables (.csv, .parquet)"

    def steps(self) -> dict[str, Step]:
        return {"clean": lambda step, items, data, log, extra: clean_table(items, step, log),
                "normalize": self._normalize,
                "deduplicate": lambda step, items, data, log, extra: deduplicate_table(items, step, log),
                "missing": lambda step, items, data, log, extra: missing_table(items, step, log),
                "labels": lambda *args: _check_labels(*args, kind=self)}

    @staticmethod
    def _normalize(step, items, data, log: StepLog, extra: dict) -> pd.DataFrame:
        items, extra["scaling"] = normalize_table(items, step, log)
        return items

    def input_files(self, root: Path) -> list[Path]:
        return files_under(root, TABLE_SUFFIXES)

    def read_paths(self, root: Path, paths: list[Path], data: Any, log: StepLog, extra: dict) -> pd.DataFrame:
        return validate_table(root, paths, log)

    def joined(self, parts: list[pd.DataFrame], data: Any) -> pd.DataFrame:
        from genlab.errors import GenlabError

        frames = [part for part in parts if part is not None]
        if not frames:
            raise GenlabError(f"data.path: no readable CSV or parquet rows under {data.path}")
        return pd.concat(frames).iloc[: data.limit]

    def from_loaded(self, loaded: Loaded, log: StepLog, extra: dict) -> pd.DataFrame:
        frame = loaded.x.astype("object").where(loaded.x.notna(), None)
        frame.index = [f"row {i + 1}" for i in range(len(frame))]
        log.kept = len(frame)
        return frame

    def labels(self, items: pd.DataFrame, data: Any) -> list[str | None]:
        from genlab.errors import GenlabError

        if data.target is None:
            return [None] * len(items)
        if data.target not in items.columns:
            raise GenlabError(f"data.target: no column {data.target!r} (columns: {', '.join(items.columns)})")
        return [None if pd.isna(v) else str(v) for v in items[data.target]]

    def clusters(self, items: pd.DataFrame) -> list:
        return [None] * len(items)

    def megabytes(self, items: pd.DataFrame) -> float:
        return float(items.memory_usage(deep=True).sum()) / 1e6

    def write(self, out: Path, split: str, items: pd.DataFrame, rows: np.ndarray, labels: list, names: list[str]
              ) -> None:
        items.iloc[rows].to_parquet(out / f"{split}.parquet")

    def preview(self, items: pd.DataFrame, extra: dict) -> tuple[Any, list[float], str]:
        return items.head(10).to_html(), [], ""

    def load(self, path: Path, manifest: dict, notes: list[str], weights: torch.Tensor | None) -> Loaded:
        from genlab.data.records import Loaded

        frame = pd.concat([pd.read_parquet(path / f"{s}.parquet") for s in SPLITS]).reset_index(drop=True)
        counts = manifest["splits"]
        return Loaded(frame, notes=notes, modality=self.name, parts=(counts["train"], counts["val"]), weights=weights)


class TextKind(Kind):
    """Documents stream through `stream.py`, straight into JSONL split files; this loads them back."""

    name, streams, files = "text", True, "text files (.txt, .md, .rst, .jsonl)"

    def load(self, path: Path, manifest: dict, notes: list[str], weights: torch.Tensor | None) -> Loaded:
        from genlab.data.records import Loaded

        splits = [_documents(split_files(path, manifest, s)) for s in SPLITS]
        docs = [d for split in splits for d in split]
        return Loaded(docs, notes=notes, modality=self.name, parts=(len(splits[0]), len(splits[1])))


def split_files(folder: Path, manifest: dict, split: str) -> list[Path]:
    """A text split's files in order."""
    return shard_files(folder, manifest, split, ".jsonl")


def shard_files(folder: Path, manifest: dict, split: str, suffix: str) -> list[Path]:
    """A split's files in order: the shards the manifest lists (a set from before shards: one file)."""
    if "shards" not in manifest:
        return [folder / f"{split}{suffix}"]
    return [folder / shard["file"] for shard in manifest["shards"][split]]


def read_shard(path: Path, start: int = 0, end: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Rows [start, end) of a shard of items, only they read: stored values, class indices and captions (None when
    it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as opened:
        x = opened.get_slice("x")
        end = x.get_shape()[0] if end is None else end
        y = opened.get_slice("y")[start:end] if "y" in opened.keys() else None  # noqa: SIM118 (not a dict)
        x = x[start:end]
    captions = _captions(str(path), path.stat().st_mtime_ns)
    return x, y, None if captions is None else captions[start:end]


@lru_cache(maxsize=4)
def _captions(path: str, changed: int) -> list[str] | None:
    """A shard's captions, parsed once for the reads of its rows that follow."""
    from safetensors import safe_open

    with safe_open(path, "pt") as opened:
        text = (opened.metadata() or {}).get("captions")
    return None if text is None else json.loads(text)


def load_items(kind: Kind, path: Path, manifest: dict) -> tuple[torch.Tensor, torch.Tensor | None, list | None]:
    """Every split's items of a prepared image or audio set, in split order: floats, classes and captions."""
    import torch

    read = [read_shard(f) for s in SPLITS for f in shard_files(path, manifest, s, ".safetensors")]
    read = [r for r in read if len(r[0])]  # an empty split of a set from before shards has no shape
    y = torch.cat([r[1] for r in read]) if all(r[1] is not None for r in read) else None
    captions = [c for r in read for c in r[2] or []] if manifest.get("captioned") else None
    return kind.floats(torch.cat([r[0] for r in read])), y, captions


def _documents(paths: list[Path]) -> list[str]:
    """A split's documents from its shard files in order; the pieces of one long text file join back into one."""
    docs: list[list[str]] = []
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if record.get("continues") and docs:
                        docs[-1].append(record["text"])
                    else:
                        docs.append([record["text"]])
    return ["".join(d) for d in docs]


KINDS: dict[str, Kind] = {kind.name: kind for kind in (ImageKind(), TableKind(), TextKind())}
# kinds in modules of their own, imported when first asked for
ELSEWHERE: dict[str, str] = {"audio": "genlab.prepare.clips:ClipKind"}


def kind_of(modality: str) -> Kind | None:
    """The Kind that prepares `modality`, or None when genlab prepare does not handle it."""
    if modality not in KINDS and modality in ELSEWHERE:
        from genlab.locate import locate

        KINDS[modality] = locate(ELSEWHERE[modality])()
    return KINDS.get(modality)


def kind_names() -> list[str]:
    return sorted({*KINDS, *ELSEWHERE})
