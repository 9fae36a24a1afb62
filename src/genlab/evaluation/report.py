"""report.html: one self-contained page per run (no external files), written by `genlab evaluate`."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genlab.media.formats import png_tag
from genlab.run import Run

if TYPE_CHECKING:
    from genlab.evaluation.figures import Figure


@dataclass
class Scored:
    """What one evaluator measured: metrics.json's figures, the report's rows (label, value) and the rows that say
    how they were measured, and its samples as HTML."""

    metrics: dict[str, Any]
    rows: list[tuple[str, str]] = field(default_factory=list)
    setup: list[tuple[str, str]] = field(default_factory=list)
    html: str = ""

CURVES = ("train/loss", "val/loss")
IMAGE_METRICS = {
    "fid": "FID (generated vs held-out; lower is better)",
    "fid_real_baseline": "FID of held-out real vs train real (the floor)",
    "kid_mean": "KID",
    "precision": "precision: generated images inside the real manifold (0 to 1)",
    "recall": "recall: real images inside the generated manifold (0 to 1)",
    "density": "density: real k-NN balls per sample (about 1 for the real distribution)",
    "coverage": "coverage: real k-NN balls holding a sample (0 to 1)",
    "inception_score": "Inception Score with the domain classifier (at most the number of classes)",
    "inception_score_real": "Inception Score of held-out real images",
    "memorized_share": "memorized: samples nearer a training image than held-out images come (0 to 1)",
    "memorized_share_real": "the same share for held-out real images (the floor)",
    "classifier_accuracy": "feature classifier accuracy on held-out real",
    "class_distribution_tv": "class balance: total variation to the real mix (0 = same)",
    "conditional_accuracy": "generated images classified as the requested class",
    "adherence_seen": "prompt adherence, seen pairs: attributes the judge finds as asked (0 to 1)",
    "adherence_seen_ceiling": "the same for the real images of those prompts (the judge's ceiling)",
    "adherence_seen_prompt_ignored": "the same for real images of other prompts (a model that ignores the prompt)",
    "adherence_unseen": "prompt adherence, pairs never seen in training (0 to 1)",
    "adherence_unseen_ceiling": "the same for the real images of those prompts (the judge's ceiling)",
    "adherence_unseen_prompt_ignored": "the same for real images of other prompts",
    "agreement_seen": "text-image agreement, seen pairs: the judge's probability of what was asked (CLIPScore's "
                      "role)",
    "agreement_seen_ceiling": "the same for the real images of those prompts",
    "agreement_unseen": "text-image agreement, unseen pairs",
    "agreement_unseen_ceiling": "the same for the real images of those prompts",
    "fid_base": "FID of the base model before this fine-tune (init_from)",
    "subject_tuned": "subject drawn: samples of the subject's prompt the judge reads as it, its shape in its "
                     "colour (0 to 1)",
    "subject_base": "the same for the base model before the fine-tune",
    "subject_ceiling": "the same for held-out real images of the subject (the judge's ceiling)",
    "adherence_seen_before": "the base's own prompts: adherence of the base before the fine-tune (seen pairs)",
    "adherence_seen_after": "the same prompts after the fine-tune (the drop is what it forgot)",
    "adherence_unseen_before": "the base's own prompts: adherence of the base before the fine-tune (unseen pairs)",
    "adherence_unseen_after": "the same prompts after the fine-tune",
}


def write_report(run: Run, rows: list[tuple[str, str]], setup: list[tuple[str, str]], samples: str) -> Path:
    """The page: metric rows, how they were measured, the modality's samples (HTML), training and curves."""
    s = run.summary
    speed = (f"{s['samples_per_s']:.0f} samples/s, {100 * s['mfu']:.0f}% of the matmul peak"
             if s.get("samples_per_s") else s.get("throughput", "not measured"))
    if s.get("tokens_per_s"):
        speed += f", {s['tokens_per_s']:.0f} tokens/s"
    training = [("family", run.config.model.family), ("parameters", f"{s.get('parameters', 0):,}"),
                ("steps", f"{s.get('steps')} of {s.get('max_steps')} ({s.get('stopped_because')})"),
                ("time", f"{s.get('seconds')} s"), ("throughput", speed)]
    body = [
        f"<h1>{html.escape(run.path.name)}</h1>",
        "<h2>Metrics</h2>", _table(rows + setup),
        "<h2>Samples</h2>", samples,
        "<h2>Training</h2>", _table(training), _curves(run.paths.tb),
    ]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>genlab: {html.escape(run.path.name)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    run.paths.report.write_text(page)
    return run.paths.report


def image_samples(fake: torch.Tensor, real: torch.Tensor) -> str:
    return (f"<div class=row><figure>{png_tag(fake[:64])}<figcaption>generated</figcaption></figure>"
            f"<figure>{png_tag(real[:64])}<figcaption>held-out real</figcaption></figure></div>")


def image_rows(images: torch.Tensor, per_row: int, caption: str) -> str:
    """One figure of images laid out `per_row` a row (e.g. bicubic, upscaled, original)."""
    return f"<figure>{png_tag(images, nrow=per_row)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def text_samples(prompts: list[str], continuations: list[str]) -> str:
    return "".join(f"<pre><b>{html.escape(p)}</b>{html.escape(c)}</pre>"
                   for p, c in zip(prompts, continuations, strict=True))


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _curves(tb_dir: Path, width: int = 640, height: int = 240) -> str:
    """Loss curves from the run's own TensorBoard events, drawn as inline SVG on a log scale."""
    series = scalar_series(tb_dir, CURVES)
    if series is None:
        return "<p>no TensorBoard logs</p>"
    if not series:
        return "<p>no loss curves logged</p>"
    return line_chart(series, "loss curves", width, height)


def loss_tags(tb_dir: Path, under: tuple[str, ...] = ("train/", "val/")) -> list[str]:
    """The loss curves a run logged to TensorBoard (`train/loss`, a GAN's `train/d_loss`...)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return []
    tags = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload().Tags()["scalars"]
    return sorted(t for t in tags if t.startswith(under) and t.endswith("loss"))


def scalar_series(tb_dir: Path, tags: tuple[str, ...] | list[str]) -> dict[str, list[tuple[float, float]]] | None:
    """{tag: [(step, value)]} of the tags a run logged to TensorBoard (positive values); None without logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return None
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag) if e.value > 0]
            for tag in tags if tag in acc.Tags()["scalars"]}


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def line_chart(series: dict[str, list[tuple[float, float]]], label: str, width: int = 640, height: int = 240,
               *, log: bool = True, x_name: str = "step", dots: bool = False) -> str:
    """Named (x, y) series as inline SVG: lines (or dots), a log y axis when `log` (values must be positive)."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    x_max = max(x for x, _ in points) or 1

    def scale(v: float) -> float:
        return math.log10(v) if log else v

    lo, hi = min(scale(v) for _, v in points), max(scale(v) for _, v in points)
    span = (hi - lo) or 1.0

    def at(x: float, v: float) -> tuple[float, float]:
        return 40 + (width - 50) * x / x_max, 10 + (height - 40) * (hi - scale(v)) / span

    marks = []
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        if dots:
            marks += [f"<circle cx={x:.1f} cy={y:.1f} r=3 fill='{colour}'/>" for x, y in (at(*p) for p in values)]
        else:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(*p) for p in values))
            marks.append(f"<polyline fill=none stroke='{colour}' stroke-width=1.5 points='{path}'/>")
        marks.append(f"<text x={width - 160} y={20 + 16 * i} fill='{colour}'>{html.escape(name)}</text>")
    top, bottom = (10 ** hi, 10 ** lo) if log else (hi, lo)
    axes = (f"<text x=2 y=16>{top:.3g}</text><text x=2 y={height - 30}>{bottom:.3g}</text>"
            f"<text x={width - 80} y={height - 5}>{x_name} {x_max:g}</text>")
    return (f"<svg width={width} height={height} role=img aria-label='{html.escape(label)}'>{''.join(marks)}"
            f"{axes}</svg>")


def write_sweep_report(path: Path, result: dict, best_samples: str) -> Path:
    """sweep.html: the objective of every trial by number with the best so far, the best trials, the parameter
    importances, and the best trial's samples."""
    maximize = result["direction"] == "maximize"
    done = [(h["number"], h["value"]) for h in result["history"] if h["value"] is not None and h["state"] == "complete"]
    pruned = [(h["number"], h["last"]) for h in result["history"] if h["state"] == "pruned" and h["last"] is not None]
    best, running = [], None
    for number, value in sorted(done):
        running = value if running is None else (max if maximize else min)(running, value)
        best.append((number, running))
    positive = all(v > 0 for _, v in [*done, *pruned])
    chart = line_chart({"finished": done, "pruned (last reported)": pruned}, "objective by trial", log=positive,
                       x_name="trial", dots=True) + line_chart({"best so far": best}, "best so far", log=positive,
                                                               x_name="trial")
    rows = "".join(f"<tr><td>{b['number']}</td><td>{b['value']:.4g}</td><td>{html.escape(json_line(b['params']))}"
                   f"</td><td>{html.escape(str(b['run']))}</td></tr>" for b in result["best"])
    importances = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>"
                          for k, v in result["importances"].items())
    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items() if n)
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>genlab sweep</title><style>{_CSS}</style></head>
<body><h1>Sweep: {html.escape(result['objective'])} ({result['direction']})</h1>
<p>{result['trials']} trials asked for: {counts}.</p>{chart}
<h2>Best trials</h2><table><tr><th>trial</th><th>{html.escape(result['objective'])}</th><th>parameters</th>
<th>run</th></tr>{rows}</table>
<h2>Parameter importances (fANOVA)</h2>{f'<table>{importances}</table>' if importances else
'<p>not yet: they need three finished trials</p>'}
<h2>The best trial's samples</h2>{best_samples}</body></html>"""
    path.write_text(page)
    return path


def write_compare_report(path: Path, result: dict, curves: str, samples: str) -> Path:
    """compare.html: the config differences, the shared figures (best of each in bold), curves and samples."""
    names = result["runs"]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    differs = "".join(f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{html.escape(json_line(v))}</td>" for v in vs)
                      + "</tr>" for k, vs in result["config_differences"].items())
    rows = []
    for f in result["figures"]:
        known = [v for v in f["values"] if v is not None]
        best = None if f["higher_is_better"] is None or not known else (max if f["higher_is_better"] else min)(known)
        cells = []
        for value, interval in zip(f["values"], f["intervals"], strict=True):
            text = "" if value is None else f"{value:.4g}" + (
                f" <small>[{interval[0]:.3g}, {interval[1]:.3g}]</small>" if isinstance(interval, list) else "")
            cells.append(f"<td><b>{text}</b></td>" if value is not None and value == best else f"<td>{text}</td>")
        rows.append(f"<tr><th>{html.escape(f['label'])}</th>{''.join(cells)}</tr>")
    unevaluated = [n for n, e in zip(names, result["evaluated"], strict=True) if not e]
    note = (f"<p>Not evaluated yet (genlab evaluate RUN): {html.escape(', '.join(unevaluated))}.</p>"
            if unevaluated else "")
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>genlab compare</title><style>{_CSS}</style></head>
<body><h1>{len(names)} runs compared</h1>
<h2>Config differences</h2>{f'<table><tr><th></th>{head}</tr>{differs}</table>' if differs else
'<p>the configs are the same</p>'}
<h2>Figures</h2>{note}{f'<table><tr><th></th>{head}</tr>{"".join(rows)}</table>' if rows else
'<p>no figure is reported by two runs</p>'}
<p>Brackets: 90% bootstrap intervals where the evaluation gives them; bold: the better of a headline figure.</p>
<h2>Training curves</h2>{curves}<h2>Samples (seed 0)</h2>{samples}</body></html>"""
    path.write_text(page)
    return path


def json_line(value: object) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "))


_CSS = """body{font:14px system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
th{font-weight:normal;color:#555}.row{display:flex;gap:1em}figure{margin:0}img{image-rendering:pixelated}
svg{border:1px solid #ddd;margin-top:1em}figcaption{color:#555}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;border-left:3px solid #1f77b4}"""


def write_bakeoff_report(path: Path, result: dict, headline: tuple[Figure, ...], previews: dict) -> Path:
    """bakeoff.html: the entries side by side (best of each column in bold), then each one's samples."""
    entries = result["entries"]
    best = {}
    for f in headline:
        values = [e["metrics"][f.key] for e in entries if e["metrics"].get(f.key) is not None]
        if values:
            best[f.key] = max(values) if f.higher_is_better else min(values)
    head = "".join(f"<th>{html.escape(f.label)} {'&uarr;' if f.higher_is_better else '&darr;'}</th>" for f in headline)
    rows = []
    for e in entries:
        cells = []
        for key in (f.key for f in headline):
            value, interval = e["metrics"].get(key), e.get("intervals", {}).get(key)
            text = "" if value is None else f"{value:.4g}" + (
                f" <small>[{interval[0]:.3g}, {interval[1]:.3g}]</small>" if interval else "")
            cells.append(f"<td><b>{text}</b></td>" if value is not None and value == best.get(key) else
                         f"<td>{text}</td>")
        speed = f"{1 / e['seconds_per_sample']:.1f}" if e.get("seconds_per_sample") else ""
        rows.append(f"<tr><td>{html.escape(e['name'])}</td><td>{e['family']}</td><td>{e['parameters'] or 0:,}</td>"
                    f"<td>{e['steps']}</td><td>{e['train_seconds']}</td>{''.join(cells)}<td>{speed}</td></tr>")
    shown = []
    for e in entries:
        shown.append(f"<h3>{html.escape(e['name'])}</h3>{previews.get(e['name'], '')}")
    ranking = " &gt; ".join(html.escape(n) for n in result["ranking"])
    page = f"""<!doctype html><meta charset="utf-8"><title>genlab bake-off</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
img{{image-rendering:pixelated}}pre{{background:#f4f4f4;padding:6px}}</style>
<h1>Bake-off: {len(entries)} entries, {result['budget_seconds']:g} s of training each</h1>
<p>Data: {html.escape(str(result['data'].get('path') or result['data']['source']))}, the same split for every
entry. Ranked by {html.escape(headline[0].label) if headline else 'entry order'}: {ranking}.
{html.escape(result.get('verdict', ''))}. Brackets: 90% bootstrap intervals.</p>
<table><tr><th>entry</th><th>family</th><th>parameters</th><th>steps</th><th>train s</th>{head}
<th>samples/s (sampling)</th></tr>{''.join(rows)}</table>
<h2>Samples (seed 0)</h2>{''.join(shown)}"""
    path.write_text(page)
    return path
