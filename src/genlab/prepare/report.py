"""data_report.json and data_report.html: the per-step table, histograms, samples and what was removed."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np


def write_reports(out: Path, summary: dict, samples: Any, lengths: list[float], length_label: str) -> None:
    (out / "data_report.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "data_report.html").write_text(_html(summary, samples, lengths, length_label))


def _html(summary: dict, samples: Any, lengths: list[float], length_label: str) -> str:
    rows = "".join(
        f"<tr><td>{s['step']}</td><td>{s['kept']}</td><td>{s['changed']}</td><td>{s['removed']}</td>"
        f"<td>{_mbps(s)}</td><td>{html.escape('; '.join(s['notes']))}</td></tr>" for s in summary["steps"])
    removed = "".join(
        f"<li><b>{html.escape(s['step'])}: {html.escape(reason)}</b> ({s['reasons'][reason]}): "
        f"{html.escape(', '.join(places))}</li>"
        for s in summary["steps"] for reason, places in s["examples"].items()) or "<li>nothing</li>"
    counts = summary.get("labels", {}).get("counts", {})
    charts = _bar(counts, "items per class") if counts else ""
    charts += _histogram(lengths, length_label) if lengths else ""
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    title = f"data report: {html.escape(summary['name'])}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}pre{{background:#f6f6f6;padding:8px;white-space:pre-wrap}}
img{{image-rendering:pixelated;margin:4px}}</style></head><body>
<h1>Data report: {html.escape(summary['name'])}</h1>
<p>{summary['modality']} from {html.escape(str(summary['source']))}: {summary['read']} read,
{summary['items']} prepared; splits: {splits}.</p>
<h2>Steps</h2><table><tr><th>step</th><th>kept</th><th>changed</th><th>removed</th><th>MB/s</th><th>notes</th></tr>
{rows}</table>
<h2>Removed or changed, and why</h2>
<p>A few examples of each reason; removed.jsonl beside this page names every removed item.</p><ul>{removed}</ul>
<h2>Distributions</h2>{charts}
<h2>Samples</h2>{_samples(samples)}
</body></html>"""


def _mbps(step: dict) -> str:
    return f"{step['megabytes'] / step['seconds']:.1f}" if step["megabytes"] and step["seconds"] else ""


def _figure(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f"<img alt=chart src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _bar(counts: dict, title: str) -> str:
    def draw(ax):
        ax.bar([str(k) for k in counts], list(counts.values()), color="#4878a8")
        ax.set_title(title)
    return _figure(draw)


def _histogram(values: list[float], title: str) -> str:
    def draw(ax):
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#6a9f58")
        ax.set_title(title)
    return _figure(draw)


def _samples(samples: Any) -> str:
    if isinstance(samples, np.ndarray):  # images (N, H, W, C) uint8: one grid
        from PIL import Image

        grid = np.concatenate([np.pad(s, ((1, 1), (1, 1), (0, 0))) for s in samples[:32]], axis=1)
        buffer = io.BytesIO()
        image = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
        scale = max(1, 64 // max(1, samples.shape[1]))
        image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(buffer, format="PNG")
        return f"<img alt=samples src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
    if isinstance(samples, str):  # a table's head, as HTML
        return samples
    return "".join(f"<pre>{html.escape(text[:400])}</pre>" for text in samples[:5])
