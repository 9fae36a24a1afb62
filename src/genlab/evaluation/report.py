"""report.html: one self-contained page per run (no external files), written by `genlab evaluate`."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import torch
from PIL import Image

from genlab.images import image_grid
from genlab.run import Run

CURVES = ("train/loss", "val/loss")
IMAGE_METRICS = {
    "fid": "FID (generated vs held-out; lower is better)",
    "fid_real_baseline": "FID of held-out real vs train real (the floor)",
    "kid_mean": "KID",
    "classifier_accuracy": "feature classifier accuracy on held-out real",
    "class_distribution_tv": "class balance: total variation to the real mix (0 = same)",
    "conditional_accuracy": "generated images classified as the requested class",
    "elbo": "ELBO (nats per image; higher is better)",
    "nll_iwae": "NLL, importance-weighted bound (nats per image)",
    "reconstruction_mse": "reconstruction error (MSE per pixel)",
    "active_units": "active latent units",
    "mig": "MIG (disentanglement, 0 to 1)",
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
    return (f"<div class=row><figure>{_png(fake[:64])}<figcaption>generated</figcaption></figure>"
            f"<figure>{_png(real[:64])}<figcaption>held-out real</figcaption></figure></div>")


def image_rows(images: torch.Tensor, per_row: int, caption: str) -> str:
    """One figure of images laid out `per_row` a row (e.g. bicubic, upscaled, original)."""
    return f"<figure>{_png(images, nrow=per_row)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def text_samples(prompts: list[str], continuations: list[str]) -> str:
    return "".join(f"<pre><b>{html.escape(p)}</b>{html.escape(c)}</pre>"
                   for p, c in zip(prompts, continuations, strict=True))


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _png(images: torch.Tensor, scale: int = 2, nrow: int | None = None) -> str:
    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"<img alt=samples src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _curves(tb_dir: Path, width: int = 640, height: int = 240) -> str:
    """Loss curves from the run's own TensorBoard events, drawn as inline SVG on a log scale."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return "<p>no TensorBoard logs</p>"
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    series = {tag: [(e.step, e.value) for e in acc.Scalars(tag) if e.value > 0]
              for tag in CURVES if tag in acc.Tags()["scalars"]}
    points = [p for values in series.values() for p in values]
    if not points:
        return "<p>no loss curves logged</p>"
    x_max = max(x for x, _ in points) or 1
    lo, hi = min(math.log10(v) for _, v in points), max(math.log10(v) for _, v in points)
    span = (hi - lo) or 1.0

    def at(x: int, v: float) -> str:
        return f"{40 + (width - 50) * x / x_max:.1f},{10 + (height - 40) * (hi - math.log10(v)) / span:.1f}"

    lines = [f"<polyline fill=none stroke='{colour}' stroke-width=1.5 points='{' '.join(at(*p) for p in values)}'/>"
             f"<text x={width - 120} y={20 + 16 * i} fill='{colour}'>{tag}</text>"
             for i, ((tag, values), colour) in enumerate(zip(series.items(), ("#1f77b4", "#d62728")))]
    axes = (f"<text x=2 y=16>{10 ** hi:.3g}</text><text x=2 y={height - 30}>{10 ** lo:.3g}</text>"
            f"<text x={width - 80} y={height - 5}>step {x_max}</text>")
    return f"<svg width={width} height={height} role=img aria-label='loss curves'>{''.join(lines)}{axes}</svg>"


_CSS = """body{font:14px system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
th{font-weight:normal;color:#555}.row{display:flex;gap:1em}figure{margin:0}img{image-rendering:pixelated}
svg{border:1px solid #ddd;margin-top:1em}figcaption{color:#555}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;border-left:3px solid #1f77b4}"""
