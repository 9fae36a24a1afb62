"""`genlab prepare`: a data config's inputs through its pipeline into a prepared set and a report.

    read (validate) -> clean -> normalize -> deduplicate -> missing -> labels -> split -> write

Steps run in the order `data.pipeline` lists them (`config/prepare.py` has each modality's
default). Reading always comes first: a step cannot work on what could not be read. The set is
written to a fresh folder beside `--out` and moved into place at the end, so a failed or killed
run leaves the earlier prepared set as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from genlab.config import RunConfig, load_config
from genlab.config.prepare import pipeline_of
from genlab.data.registry import FILES
from genlab.errors import GenlabError
from genlab.prepare.kinds import SPLITS, Kind, kind_names, kind_of
from genlab.prepare.record import StepLog
from genlab.prepare.report import write_reports
from genlab.prepare.split import assign_splits
from genlab.prepare.store import (
    MANIFEST,
    REMOVED,
    cache_folder,
    fingerprint,
    load_prepared,
    reasons,
    summary,
)
from genlab.quiet import quiet

log = logging.getLogger("genlab")

__all__ = ["cached", "load_prepared", "pipeline_of", "prepare"]



@quiet
def prepare(config: str | Path | dict | RunConfig | None, out: str | Path | None = None,
            overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Run the data config's pipeline; returns the folder holding the prepared set and its reports."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
    data = cfg.data
    out = Path(out) if out is not None else Path("prepared") / cfg.name
    if data.prepared is not None:
        raise GenlabError("data.prepared: this config reads a prepared set already; prepare the raw data's config")
    if (kind_of(FILES.get(data.source) or _modality(data)) or Kind()).streams:
        return _prepare_text(cfg, out)
    kind = _kind(data)
    staging = out.parent / f".{out.name}.partial"
    # A mistake leaves the earlier set as it was and nothing half-written beside it. A kill runs nothing here: it
    # leaves the finished blocks in `staging`, which the next run reads back (`read_items`).
    try:
        return _prepare_items(cfg, kind, staging, out)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _prepare_items(cfg: RunConfig, kind: Kind, staging: Path, out: Path) -> Path:
    """Images, audio and tables: read and hashed in blocks (`items.py`), then the remaining steps over every item."""
    from genlab.prepare.engine import engine
    from genlab.prepare.items import read_items

    data = cfg.data
    pipeline = [step for step in pipeline_of(data, kind.name) if step.step not in ("validate", "split")]
    items, logs, extra = read_items(data, kind, pipeline, engine(data.engine, data.address), staging,
                                    fingerprint(data), data.blocks)
    read_count, runs = logs[0].kept + logs[0].removed, kind.steps()
    for step in pipeline[len(logs) - 1:]:
        log = StepLog(step.step, megabytes=kind.megabytes(items))
        began = time.perf_counter()
        if step.step in runs:
            items = runs[step.step](step, items, data, log, extra)
        else:
            log.notes.append(f"does not apply to {kind.name}")
            log.kept = len(items)
        log.seconds = time.perf_counter() - began
        logs.append(log)
    if not len(items):
        raise _nothing_left(logs, data)
    labels = kind.labels(items, data)
    split = assign_splits(labels, kind.clusters(items), data.val_fraction, data.test_fraction, data.split_seed)
    logs.append(StepLog("split", kept=len(items), notes=[f"{n} {SPLITS[k]}" for k, n in
                                                          zip(*np.unique(split, return_counts=True))]))
    return _write(cfg, staging, out, kind, items, labels, split, logs, extra, read_count)


def _modality(data) -> str:
    """A source's modality: built-ins as the registry declares them (text streams, so it is known before loading),
    a user's registered source by loading it."""
    from genlab.data.registry import MODALITY, source

    return MODALITY.get(data.source) or source(data.source)(data).modality


def _prepare_text(cfg: RunConfig, out: Path) -> Path:
    """Text in blocks through every step, on the configured engine (`text.py`), into sharded split files."""
    from genlab.prepare.engine import engine
    from genlab.prepare.text import prepare_text

    data = cfg.data
    staging = out.parent / f".{out.name}.partial"  # kept across a kill: `prepare_text` reuses its finished blocks
    staging.mkdir(parents=True, exist_ok=True)
    done = prepare_text(data, staging, engine(data.engine, data.address), data.blocks)
    logs, counts = done["logs"], done["counts"]
    if not sum(counts.values()):
        shutil.rmtree(staging)
        raise _nothing_left(logs, data)
    logs.append(StepLog("split", kept=sum(counts.values()), notes=[f"{n} {s}" for s, n in counts.items()]))
    extra = {"dedup": done["dedup"]}
    summary = _summary(cfg, "text", sum(counts.values()), counts, [], extra, logs, logs[0].kept + logs[0].removed)
    summary["shards"] = done["shards"]
    return _finish(staging, out, summary, (done["first"], done["lengths"], "characters per document"), logs)


def _kind(data) -> Kind:
    if data.source in FILES:
        if data.path is None:
            raise GenlabError(f"data.path: required to prepare data.source {data.source!r}")
        return kind_of(FILES[data.source])
    modality = _modality(data)  # a built-in set: nothing to skip, but every other step applies
    kind = kind_of(modality)
    if kind is None or kind.streams:
        raise GenlabError(f"data.source {data.source!r}: genlab prepare handles {', '.join(kind_names())}, "
                          f"not {modality}")
    return kind


def _nothing_left(logs: list[StepLog], data) -> GenlabError:
    if not logs[0].kept + logs[0].removed:
        files = kind_of(FILES[data.source]).files if data.source in FILES else "items"
        return GenlabError(f"data.path: no {files} found under {data.path}")
    return GenlabError(f"data: nothing is left after the pipeline ({'; '.join(reasons([g.as_dict() for g in logs]))})")


def _write(cfg: RunConfig, staging: Path, out: Path, kind: Kind, items, labels: list, split: np.ndarray,
           logs: list[StepLog], extra: dict, read_count: int) -> Path:
    items = kind.finish(items, cfg.data)
    names = sorted({label for label in labels if label is not None})
    counts, shards = {}, {}
    for k, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == k)
        counts[name] = len(rows)
        shards[name] = kind.write(staging, name, items, rows, labels, names)
    label_info = extra.get("labels", {})
    if "weights" in label_info:
        weights = np.array(label_info.pop("weights"))
        (staging / "weights.json").write_text(json.dumps({s: weights[split == k].round(6).tolist()
                                                          for k, s in enumerate(SPLITS)}))
    summary = _summary(cfg, kind.name, len(items), counts, names, extra, logs, read_count)
    summary["captioned"] = kind.captioned(items)
    if shards["train"] is not None:
        summary["shards"] = shards
    preview = kind.preview(items, extra)
    shutil.rmtree(staging / ".blocks", ignore_errors=True)
    return _finish(staging, out, summary, preview, logs)


def _summary(cfg: RunConfig, modality: str, items: int, counts: dict, names: list, extra: dict,
             logs: list[StepLog], read_count: int) -> dict:
    return {"name": cfg.name, "modality": modality, "source": str(cfg.data.path or cfg.data.source),
            "read": read_count, "items": items, "splits": counts, "class_names": names,
            "labels": extra.get("labels", {}), "scaling": extra.get("scaling", {}), "dedup": extra.get("dedup"),
            "steps": [log.as_dict() for log in logs], "data": cfg.data.model_dump(mode="json")}


def _finish(staging: Path, out: Path, summary: dict, preview: tuple, logs: list[StepLog]) -> Path:
    (staging / MANIFEST).write_text(json.dumps(summary, indent=2, default=str))
    with (staging / REMOVED).open("w") as f:  # every removal, where the report shows a few of each reason
        for log in logs:
            for reason, where in log.gone:
                f.write(json.dumps({"step": log.step, "reason": reason, "where": where}, ensure_ascii=False) + "\n")
    write_reports(staging, summary, *preview)
    if out.exists():
        backup = out.parent / f".{out.name}.old"
        shutil.rmtree(backup, ignore_errors=True)
        out.rename(backup)
        staging.rename(out)
        shutil.rmtree(backup)
    else:
        staging.rename(out)
    return out


def cached(data) -> Path:
    """The prepared set for `data` from the cache (GENLAB_CACHE, default ~/.cache/genlab), preparing it if new.
    A file lock makes one process prepare while the others (DDP ranks, a second fit) wait and reuse it."""
    from filelock import FileLock

    folder = cache_folder(data)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if (folder / MANIFEST).is_file():
            log.info(f"data: using the prepared set cached at {folder}")
            return folder
        log.info(f"data: preparing {data.path or data.source} into the cache at {folder}")
        prepare(RunConfig(name=folder.name, data=data), folder)
    line = summary(folder)
    (log.info if "nothing removed" in line else log.warning)(f"data: {line}; report: {folder / 'data_report.html'}")
    return folder
