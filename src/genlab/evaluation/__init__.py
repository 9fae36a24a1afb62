"""Evaluation: `evaluate_run` scores a run with its family's evaluator and writes metrics.json and report.html."""

from __future__ import annotations

from typing import Any

from genlab.config import sampling_options, with_given
from genlab.locate import locate
from genlab.run import Run


def evaluate_run(run: Run, *, num_samples: int | None = None, seed: int | None = None,
                 **sampling: Any) -> dict[str, Any]:
    """Score the run's model on held-out data; `sampling` overrides the run's `eval.sampling`."""
    cfg = run.config
    ev = type(cfg.eval).model_validate(with_given(cfg.eval.model_dump(), num_samples=num_samples, seed=seed))
    options = sampling_options(cfg.model.family, with_given(ev.sampling, **sampling))
    return locate(run.model.evaluator)(run, ev, options)  # the family says how it is scored
