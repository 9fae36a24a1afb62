"""The built-in families' verbs as `genlab VERB RUN ...` runs them: each calls the Python API and says what
it wrote. Families declare them (`ModelConfig.verbs`); a family of one's own points at its own functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlab import api
from genlab.config.verb import Done
from genlab.run import Run


def upscale(run: Run, source: Path, out: Path | None = None) -> Done:
    written, failed = api.upscale_files(run, source, out)
    where = (written[0] if len(written) == 1 else written[0].parent) if written else None
    return Done([f"wrote {len(written)} upscaled image(s) to {where}"] if written else [], failed)


def impute(run: Run, source: Path, out: Path, seed: int = 0) -> Done:
    return Done([f"wrote the imputed table to {api.impute_file(run, source, out, seed=seed)}"])


def score(run: Run, source: Path, out: Path, seed: int = 0) -> Done:
    return Done([f"wrote anomaly scores to {api.score_file(run, source, out, seed=seed)}"])


def translate(run: Run, source: Path, out: Path | None = None, seed: int = 0, **options: Any) -> Done:
    records = api.translate_file(run, source, out, seed=seed, **options)
    if out is None:
        return Done([json.dumps(r, ensure_ascii=False) for r in records])
    return Done([f"wrote {len(records)} predictions to {out}"])


def _latent(mode: str, run: Run, n: int, steps: int, seed: int, out: Path | None, dim: list[int] | None = None
            ) -> Done:
    path = api.latent_grid(run, mode, n, seed=seed, steps=steps, dims=dim or None, out=out)
    return Done([f"wrote the {mode} grid to {path}"])


def reconstruct(run: Run, **arguments: Any) -> Done:
    return _latent("reconstruct", run, **arguments)


def interpolate(run: Run, **arguments: Any) -> Done:
    return _latent("interpolate", run, **arguments)


def traverse(run: Run, **arguments: Any) -> Done:
    return _latent("traverse", run, **arguments)
