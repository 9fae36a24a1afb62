"""Headline figures: what `genlab evaluate` prints of metrics.json, each beside its baseline, and what a bake-off
ranks by. A capability declares its own (torch-free, so declaring one costs nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One headline figure of metrics.json."""

    key: str  # dotted path into metrics.json, e.g. "imputation.genlab.rmse"
    label: str
    higher_is_better: bool
    beside: tuple[str, str] | None = None  # (dotted path, name) of the baseline the figure is read against

    def value(self, metrics: dict[str, Any]) -> float | None:
        return metric_at(metrics, self.key)

    def baseline(self, metrics: dict[str, Any]) -> float | None:
        return None if self.beside is None else metric_at(metrics, self.beside[0])

    def line(self, metrics: dict[str, Any]) -> str | None:
        """"label: value (baseline name: value)", or None when metrics.json does not hold it."""
        value, baseline = self.value(metrics), self.baseline(metrics)
        if value is None:
            return None
        return f"{self.label}: {value:.4g}" + (f" ({self.beside[1]}: {baseline:.4g})" if baseline is not None else "")


def metric_at(metrics: dict[str, Any], dotted: str) -> Any:
    """metrics["a"]["b"] for "a.b"; None where any part is missing."""
    for part in dotted.split("."):
        if not isinstance(metrics, dict) or part not in metrics:
            return None
        metrics = metrics[part]
    return metrics
