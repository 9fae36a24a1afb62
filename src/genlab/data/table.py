"""Table sources: a CSV or parquet file (`data.source: table`), and scikit-learn's built-in tables.

A table is a pandas DataFrame with its own dtypes; missing cells stay missing (the tabular VAE
learns with them). Rows are split by `data.split_seed`, stratified by `data.target` when given;
with `data.normal_class`, train and val hold only that class and every other row is a labelled
anomaly in the test split (the label column leaves the table; `Split.y` marks the anomalies).
Reading names each problem by file, row and column: a ragged CSV row is skipped and reported, an
all-empty column is dropped with a warning; every valid row is kept.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genlab.data.records import Dataset, DataSpec, Loaded, Split, split_indices
from genlab.errors import GenlabError
from genlab.media.suffixes import TABLE_SUFFIXES

log = logging.getLogger("genlab")


def table(cfg) -> Loaded:
    if cfg.path is None:
        raise GenlabError("data.path: required for data.source 'table' (a .csv or .parquet file)")
    frame, notes = read_table(Path(cfg.path).expanduser())
    return _loaded(frame, cfg, notes)


def breast_cancer(cfg) -> Loaded:
    """569 tumours, 30 numeric features and `target` (malignant / benign)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    frame = d.frame.assign(target=pd.Categorical.from_codes(d.target, d.target_names).astype(str))
    return _loaded(frame, cfg, [])


def wine(cfg) -> Loaded:
    """178 wines, 13 numeric features and `class` (a categorical column: class_0, class_1, class_2)."""
    from sklearn.datasets import load_wine

    d = load_wine(as_frame=True)
    frame = d.data.assign(**{"class": pd.Categorical.from_codes(d.target, d.target_names).astype(str)})
    return _loaded(frame, cfg, [])


def diabetes(cfg) -> Loaded:
    """442 patients, 10 features in their raw units with `sex` categorical (1 or 2), and `progression`."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True, scaled=False)
    frame = d.data.assign(sex=d.data["sex"].astype(int).astype(str), progression=d.target)
    return _loaded(frame, cfg, [])


def read_table(path: Path, drop_empty: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """A CSV or parquet file as a DataFrame, and notes on what was skipped (ragged rows; for training,
    all-empty columns, which teach nothing)."""
    if not path.is_file():
        raise GenlabError(f"data.path: {path} is not a file")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise GenlabError(f"data.path: {path.name}: expected a .csv or .parquet file")
    notes: list[str] = []
    if path.suffix.lower() == ".csv":
        frame = _read_csv(path, notes)
    else:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several kinds for a file that is not parquet
            raise GenlabError(f"{path}: not a readable parquet file ({err.__class__.__name__})") from None
    empty = [c for c in frame.columns if frame[c].isna().all()] if drop_empty else []
    if empty:
        notes.append(f"dropped all-empty column(s): {', '.join(map(str, empty))}")
        log.warning(f"{path.name}: column(s) {', '.join(map(str, empty))} hold no values; dropped")
        frame = frame.drop(columns=empty)
    if frame.empty:
        raise GenlabError(f"{path}: no rows with values")
    return frame, notes


def _read_csv(path: Path, notes: list[str]) -> pd.DataFrame:
    bad: list[str] = []

    def ragged(fields: list[str]) -> None:  # pandas calls this for each row with too many fields
        bad.append(f"{len(fields)} fields")
        return None

    try:
        with path.open(newline="") as f:
            width = len(next(csv.reader(f), []))
        frame = pd.read_csv(path, on_bad_lines=ragged, engine="python")
    except (UnicodeDecodeError, pd.errors.ParserError, StopIteration) as err:
        raise GenlabError(f"{path}: not a readable CSV file ({err.__class__.__name__}: {err})") from None
    if bad:
        notes.append(f"skipped {len(bad)} row(s) with more than {width} fields")
        log.warning(f"{path.name}: skipped {len(bad)} row(s) with more than the header's {width} fields")
    return frame


def _loaded(frame: pd.DataFrame, cfg, notes: list[str]) -> Loaded:
    if cfg.limit:
        frame = frame.iloc[: cfg.limit]
    for name in (cfg.target, cfg.normal_class and cfg.target):
        if name and name not in frame.columns:
            raise GenlabError(f"data.target: no column {name!r} (columns: {', '.join(map(str, frame.columns))})")
    if cfg.normal_class is not None and cfg.target is None:
        raise GenlabError("data.normal_class: needs data.target, the column it is a class of")
    return Loaded(frame.reset_index(drop=True), notes=notes, modality="table")


def split_table(data: Loaded, cfg) -> Dataset:
    """Rows to train/val/test, stratified by the target; with `normal_class`, anomalies all go to test."""
    frame: pd.DataFrame = data.x
    labels = frame[cfg.target].astype(str) if cfg.target else None
    normal = np.ones(len(frame), bool) if cfg.normal_class is None else (labels == str(cfg.normal_class)).to_numpy()
    if cfg.normal_class is not None and not normal.any():
        raise GenlabError(f"data.normal_class: no row of {cfg.target!r} is {cfg.normal_class!r} "
                          f"(values: {', '.join(sorted(labels.unique()))})")
    rows = np.flatnonzero(normal)
    if data.parts is not None:  # a prepared set's own split (anomalies still go to test)
        a, b = data.parts
        train, val, test = rows[rows < a], rows[(rows >= a) & (rows < a + b)], rows[rows >= a + b]
    else:
        codes = None if labels is None else _codes(labels.iloc[rows])
        parts = split_indices(len(rows), codes, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        train, val, test = (rows[p] for p in parts)
    test = np.sort(np.concatenate([test, np.flatnonzero(~normal)]))
    anomalous = None
    if cfg.normal_class is not None:  # the label leaves the table: y says which rows are anomalies
        anomalous = torch.from_numpy(~normal)
        frame = frame.drop(columns=[cfg.target])
    spec = DataSpec("table", (frame.shape[1],))

    def take(idx: np.ndarray) -> Split:
        return Split(frame.iloc[idx].reset_index(drop=True), None if anomalous is None else anomalous[idx],
                     weights=None if data.weights is None else data.weights[idx])

    return Dataset(spec, take(train), take(val), take(test), data.notes)


def _codes(labels: pd.Series) -> torch.Tensor:
    return torch.from_numpy(pd.factorize(labels)[0])
