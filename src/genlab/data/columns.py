"""Per-column transforms of a table: raw rows in, a float tensor out (NaN where a cell is missing), and back.

Numeric columns are scaled (standard, or quantile to a normal), categorical columns become category
indices; the model embeds or one-hot encodes them. The transforms are learned on the training split
and saved as `columns.json` in the model folder, so a saved model takes and returns raw rows with
their original column names, dtypes and category sets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr, ndtri

from genlab.errors import GenlabError

log = logging.getLogger("genlab")
QUANTILES = 1000
FILE = "columns.json"


@dataclass
class Column:
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str  # the pandas dtype to give back
    mean: float = 0.0
    std: float = 1.0
    quantiles: list[float] = field(default_factory=list)  # quantile scaling: the train column's quantiles
    categories: list = field(default_factory=list)  # categorical: the values, in index order

    @property
    def size(self) -> int:
        """Outputs the decoder needs: location and scale for a number, one logit per category."""
        return 2 if self.kind == "numeric" else len(self.categories)


@dataclass
class Columns:
    columns: list[Column]

    @classmethod
    def fit(cls, frame: pd.DataFrame, scaling: str = "standard", categorical: list[str] = ()) -> Columns:
        unknown = [c for c in categorical if c not in frame.columns]
        if unknown:
            raise GenlabError(f"model.categorical: no column(s) {', '.join(unknown)} in the table")
        columns = []
        for name in frame.columns:
            values = frame[name]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            if numeric and str(name) not in categorical:
                x = values.dropna().to_numpy(float)
                std = float(x.std()) or 1.0
                q = np.quantile(x, np.linspace(0, 1, QUANTILES)).tolist() if scaling == "quantile" else []
                columns.append(Column(str(name), "numeric", str(values.dtype), float(x.mean()), std, q))
            else:
                cats = sorted(values.dropna().unique().tolist(), key=str)
                columns.append(Column(str(name), "categorical", str(values.dtype), categories=_plain(cats)))
        return cls(columns)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def encode(self, frame: pd.DataFrame, where: str = "table") -> torch.Tensor:
        """(N, columns) float32: scaled numbers and category indices, NaN where a cell is missing. A cell that
        cannot be read (text in a number column, an unseen category) is reported by row and column and
        treated as missing; a missing or unknown column is an error."""
        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            raise GenlabError(f"{where}: missing column(s) {', '.join(missing)} (the model was trained on: "
                              f"{', '.join(self.names)})")
        extra = [str(c) for c in frame.columns if str(c) not in self.names]
        if extra:
            raise GenlabError(f"{where}: unknown column(s) {', '.join(extra)} (the model was trained on: "
                              f"{', '.join(self.names)})")
        out = np.full((len(frame), len(self.columns)), np.nan, dtype=np.float64)
        for j, col in enumerate(self.columns):
            values = frame[col.name]
            if col.kind == "numeric":
                x = pd.to_numeric(values, errors="coerce").to_numpy(float)
                _report(where, col.name, values, np.isnan(x) & values.notna().to_numpy(), "is not a number")
                out[:, j] = self._scale(col, x)
            else:
                index = {str(v): i for i, v in enumerate(col.categories)}
                x = np.array([index.get(str(v), np.nan) if pd.notna(v) else np.nan for v in values], dtype=float)
                _report(where, col.name, values, np.isnan(x) & values.notna().to_numpy(),
                        f"is not one of its categories ({', '.join(map(str, col.categories[:8]))})")
                out[:, j] = x
        return torch.from_numpy(out).float()

    def decode(self, encoded: torch.Tensor) -> pd.DataFrame:
        """The inverse of `encode`: original names, dtypes and category values."""
        data = {}
        x = encoded.detach().double().cpu().numpy()
        for j, col in enumerate(self.columns):
            if col.kind == "numeric":
                values = pd.Series(self._unscale(col, x[:, j]))
                if "int" in col.dtype.lower():
                    values = values.round()
                    if not values.isna().any():
                        values = values.astype(col.dtype)
                data[col.name] = values
            else:
                codes = x[:, j]
                cats = pd.Series([col.categories[int(c)] if not np.isnan(c) else None for c in codes], dtype=object)
                data[col.name] = cats.astype(col.dtype) if col.dtype not in ("object",) else cats
        return pd.DataFrame(data)

    def standardized(self, frame: pd.DataFrame) -> np.ndarray:
        """Numeric columns z-scored by the training mean and std (the unit imputation RMSE is measured in)."""
        numeric = [c for c in self.columns if c.kind == "numeric"]
        return np.stack([(pd.to_numeric(frame[c.name], errors="coerce").to_numpy(float) - c.mean) / c.std
                         for c in numeric], axis=1) if numeric else np.zeros((len(frame), 0))

    @staticmethod
    def _scale(col: Column, x: np.ndarray) -> np.ndarray:
        if not col.quantiles:
            return (x - col.mean) / col.std
        u = np.interp(x, col.quantiles, np.linspace(0, 1, len(col.quantiles)))
        return ndtri(np.clip(u, 1e-4, 1 - 1e-4))

    @staticmethod
    def _unscale(col: Column, z: np.ndarray) -> np.ndarray:
        if not col.quantiles:
            return z * col.std + col.mean
        return np.interp(ndtr(z), np.linspace(0, 1, len(col.quantiles)), col.quantiles)

    def save(self, folder: Path) -> None:
        (folder / FILE).write_text(json.dumps([asdict(c) for c in self.columns], indent=1))

    @classmethod
    def load(cls, folder: Path) -> Columns:
        return cls([Column(**c) for c in json.loads((folder / FILE).read_text())])


def _report(where: str, name: str, values: pd.Series, bad: np.ndarray, why: str) -> None:
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(f"row {r + 2} ({values.iloc[r]!r})" for r in rows[:3])  # +2: 1-based, after the header
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        log.warning(f"{where}: column {name!r}: {shown}{more} {why}; treated as missing")


def _plain(values: list) -> list:
    """numpy scalars -> Python ones, so the categories are JSON."""
    return [v.item() if hasattr(v, "item") else v for v in values]
