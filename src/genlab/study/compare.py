"""Runs side by side: what differs in their configs, every figure they share (with its interval where the
evaluation gave one), their training curves overlaid, and their samples.

    genlab compare RUN RUN ... [--out compare.html]
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from genlab.capabilities import headline as headline_of
from genlab.config import flatten
from genlab.errors import GenlabError
from genlab.quiet import quiet
from genlab.run import Run, read_json


@quiet
def compare(paths: list[str | Path], out: str | Path | None = None, samples: int = 16) -> dict[str, Any]:
    """The comparison of two or more runs as a dict; writes compare.html at `out` when given."""
    if len(paths) < 2:
        raise GenlabError("compare: give two or more run directories")
    runs = [Run(p) for p in paths]
    names = _names(runs)
    configs = [flatten(run.config.model_dump(mode="json")) for run in runs]
    keys = sorted(set().union(*configs) - {"name"})
    differs = {k: [c.get(k) for c in configs] for k in keys if len({repr(c.get(k)) for c in configs}) > 1}
    metrics = [read_json(run.paths.metrics) for run in runs]
    figures = _shared_figures(runs[0], metrics)
    result = {"runs": names, "paths": [str(r.path) for r in runs], "config_differences": differs,
              "figures": figures, "evaluated": [bool(m) for m in metrics],
              "steps": [r.summary.get("steps") for r in runs]}
    if out is not None:
        from genlab.evaluation.report import write_compare_report

        write_compare_report(Path(out), result, _curves(runs, names), _samples(runs, names, metrics, samples))
    return result


def _names(runs: list[Run]) -> list[str]:
    """Each run's folder name, with its parent's where two share one (trials/000 of two sweeps)."""
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.path.name}" for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def _shared_figures(first: Run, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every number at least two runs report, the first run's family's headline figures first, with intervals."""
    flat = [flatten(m) for m in metrics]
    numbers = [{k: v for k, v in f.items() if isinstance(v, int | float) and not isinstance(v, bool)} for f in flat]
    shared = [k for k in sorted(set().union(*numbers)) if sum(k in n for n in numbers) >= 2
              and not k.endswith(("seed", "num_real", "num_generated")) and k != "seconds_per_sample"]
    headline = {f.key: f for f in headline_of(first.config.model.family)}
    shared.sort(key=lambda k: (k not in headline, list(headline).index(k) if k in headline else 0, k))
    out = []
    for key in shared:
        figure = headline.get(key)
        out.append({"key": key, "label": figure.label if figure else key, "values": [n.get(key) for n in numbers],
                    "intervals": [f.get(f"{key}_interval") for f in flat],
                    "higher_is_better": None if figure is None else figure.higher_is_better})
    return out


def _curves(runs: list[Run], names: list[str]) -> str:
    from genlab.evaluation.report import line_chart, loss_tags, scalar_series

    per_run = [scalar_series(r.paths.tb, loss_tags(r.paths.tb)) or {} for r in runs]
    charts = []
    for tag in sorted({tag for s in per_run for tag in s}, key=lambda t: (not t.startswith("train/"), t)):
        series = {name: s[tag] for name, s in zip(names, per_run, strict=True) if s.get(tag)}
        if series:
            charts.append(f"<h3>{html.escape(tag)}</h3>" + line_chart(series, tag))
    return "".join(charts) or "<p>no TensorBoard logs to draw</p>"


def _samples(runs: list[Run], names: list[str], metrics: list[dict[str, Any]], n: int) -> str:
    from genlab.study.bakeoff import preview

    shown = []
    for name, run, m in zip(names, runs, metrics, strict=True):
        body = preview(run, m, n) if run.paths.model.is_dir() else "<p>no exported model</p>"
        shown.append(f"<h3>{html.escape(name)}</h3>{body}")
    return "".join(shown)
