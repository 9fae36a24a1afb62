"""labels (class counts, imbalance, sampling weights) and split (by ratio and seed, clusters whole)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from genlab.config.prepare import Labels
from genlab.prepare.record import StepLog

log_ = logging.getLogger("genlab")


def check_labels(labels: list[str | None], opts: Labels, log: StepLog) -> dict:
    """Class counts and the imbalance ratio; a warning per class under `min_share`; weights if asked."""
    counts = Counter(label for label in labels if label is not None)
    log.kept = len(labels)
    if not counts:
        log.notes.append("no labels")
        return {"counts": {}}
    total = sum(counts.values())
    ratio = max(counts.values()) / min(counts.values())
    rare = sorted(c for c, n in counts.items() if n / total < opts.min_share)
    for name in rare:
        message = f"class {name!r} holds {counts[name]} of {total} items ({counts[name] / total:.1%}), under " \
                  f"labels.min_share {opts.min_share:.0%}"
        log.notes.append(message)
        log_.warning(message)
    out = {"counts": dict(sorted(counts.items())), "imbalance_ratio": round(ratio, 3), "rare": rare}
    if opts.weights:  # each class's items weigh 1 / its count, normalized to mean 1
        out["weights"] = [total / (len(counts) * counts[label]) if label is not None else 1.0 for label in labels]
    return out


def assign_splits(labels: list[str | None], clusters: list[int | None], val: float, test: float, seed: int
                  ) -> np.ndarray:
    """0 train, 1 val, 2 test per item: stratified by label, and a near-duplicate cluster always to one split."""
    groups: dict[tuple, list[int]] = {}
    for i, cluster in enumerate(clusters):  # a cluster is one unit, filed under its first item's label
        groups.setdefault(("cluster", cluster) if cluster is not None else ("item", i), []).append(i)
    units = list(groups.values())
    rng = np.random.default_rng(seed)
    by_label: dict[str | None, list[list[int]]] = {}
    for unit in units:
        by_label.setdefault(labels[unit[0]], []).append(unit)
    split = np.zeros(len(labels), dtype=np.int64)
    for label_units in by_label.values():
        order = rng.permutation(len(label_units))
        size = sum(len(u) for u in label_units)
        want_test, want_val, filled_test, filled_val = round(size * test), round(size * val), 0, 0
        for k in order:
            unit = label_units[k]
            if filled_test < want_test:
                split[unit], filled_test = 2, filled_test + len(unit)
            elif filled_val < want_val:
                split[unit], filled_val = 1, filled_val + len(unit)
    return split
