"""Audio in `genlab prepare`: clips read and converted to the data's rate and length (validate), silent clips
removed (clean), exact and near copies found (deduplicate: near by a perceptual hash of the log-mel image),
classes checked (labels); written as 16-bit PCM in safetensors.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.data.clips import audio_files, read_clip
from genlab.data.records import Loaded
from genlab.media.audio import MelSpectrogram, audio_tag
from genlab.prepare.dedup import deduplicate_hashed, digest, phash
from genlab.prepare.items import values_of, write_shards
from genlab.prepare.kinds import Kind, Step, _check_labels, _codes, load_items
from genlab.prepare.record import Item, StepLog

FULL_SCALE = 32767  # 16-bit PCM


class ClipKind(Kind):
    name, files = "audio", "audio files (.wav, .flac, .ogg)"

    def steps(self) -> dict[str, Step]:
        return {"clean": _clean, "deduplicate": _deduplicate, "labels": lambda *args: _check_labels(*args, kind=self)}

    def item_steps(self) -> set[str]:
        return {"clean"}

    def light_steps(self) -> set[str]:
        return {"deduplicate", "labels"}

    def input_files(self, root: Path) -> list[Path]:
        return audio_files(root)

    def read_paths(self, root: Path, paths: list[Path], data: Any, log: StepLog, extra: dict) -> list[Item]:
        samples = round(data.sample_rate * data.clip_seconds)
        items = []
        for path in paths:
            if data.limit is not None and len(items) >= data.limit:
                break
            where = path.relative_to(root).as_posix() if root.is_dir() else path.name
            log.megabytes += path.stat().st_size / 1e6
            wave, changed, skipped = read_clip(path, data.sample_rate, samples)
            if skipped:
                log.remove(skipped, where)
                continue
            if changed:
                log.change(changed, where)
            label = path.parent.relative_to(root).as_posix() if root.is_dir() else "."
            items.append(Item(where, wave, label if label != "." else None))
        log.kept = len(items)
        extra["sample_rate"] = data.sample_rate
        extra["peaks"] = _peaks(items)
        return items

    def from_loaded(self, loaded: Loaded, log: StepLog, extra: dict) -> list[Item]:
        names = loaded.class_names
        items = [Item(f"clip {i + 1}", wave[0].numpy(), names[int(loaded.y[i])] if loaded.y is not None else None)
                 for i, wave in enumerate(loaded.x)]
        extra["sample_rate"] = loaded.sample_rate
        extra["peaks"] = _peaks(items)
        log.kept = len(items)
        return items

    def hashed(self, items: list[Item], step, data: Any, extra: dict) -> list[Item]:
        return _hashed(items, step, data, extra)

    def megabytes(self, items: list[Item]) -> float:
        return sum(i.value.nbytes for i in items) / 1e6

    def write(self, out: Path, split: str, items: list[Item], rows: np.ndarray, labels: list, names: list[str]
              ) -> list[dict]:
        def shard(chosen: list[Item], values: list[np.ndarray]) -> tuple[dict, dict]:
            tensors = {"x": np.ascontiguousarray(_pcm(np.stack(values))[:, None]), **_codes(chosen, names)}
            return tensors, {"where": json.dumps([i.where for i in chosen])}

        return write_shards(out, split, [items[i] for i in rows], shard)

    def preview(self, items: list[Item], extra: dict) -> tuple[Any, list[float], str]:
        rate = extra.get("sample_rate") or 16_000
        players = "".join(audio_tag(wave, rate, i.where) for i, wave in zip(items[:8], values_of(items[:8])))
        return f"<div class=clips>{players}</div>", extra.get("peaks", []), "peak level (dBFS), as read"

    def load(self, path: Path, manifest: dict, notes: list[str], weights: torch.Tensor | None) -> Loaded:
        x, y, _ = load_items(self, path, manifest)
        counts = manifest["splits"]
        return Loaded(x, y, manifest.get("class_names", []), notes, self.name, (counts["train"], counts["val"]),
                      weights=weights, sample_rate=manifest["data"]["sample_rate"])

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / FULL_SCALE


def _peaks(items: list[Item]) -> list[float]:
    """Each clip's peak level in dBFS: the report's histogram."""
    return [float(20 * np.log10(max(np.abs(i.value).max(), 1e-6))) for i in items]


def _pcm(waves: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] as 16-bit PCM: how a clip is stored, and what its exact copies share."""
    return (np.clip(waves, -1, 1) * FULL_SCALE).round().astype(np.int16)


def _clean(step, items: list[Item], data: Any, log: StepLog, extra: dict) -> list[Item]:
    kept = []
    for item in items:
        if np.abs(item.value).max() < step.min_peak:
            log.remove(f"silent (peak under {step.min_peak:g})", item.where)
        else:
            kept.append(item)
    log.kept = len(kept)
    return kept


def _deduplicate(step, items: list[Item], data: Any, log: StepLog, extra: dict) -> list[Item]:
    """Exact copies by the hash of their 16-bit samples; near copies by pHash of their log-mel images."""
    if items and items[0].hashes is None:
        items = _hashed(items, step, data, extra)
    return deduplicate_hashed(items, step, log)


def _hashed(items: list[Item], step, data: Any, extra: dict) -> list[Item]:
    """Each clip with the digest of its 16-bit samples and the pHash of its log-mel image, one clip at a time (a
    batch's arithmetic would depend on which clips share it, and so on the blocks)."""
    if not items:
        return items
    samples = len(items[0].value)
    mel = MelSpectrogram(extra.get("sample_rate") or data.sample_rate, samples, 32, 32,
                         2 ** int(np.ceil(np.log2(samples / 16))), max_db=45, top_db=80)
    out = []
    with torch.no_grad():
        for item in items:
            image = mel.encode(torch.from_numpy(item.value)[None])[0]
            pixels = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            out.append(replace(item, hashes=(digest(_pcm(item.value)), phash(pixels))))
    return out
