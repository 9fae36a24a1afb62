"""Evaluation: `evaluate_run` scores a run by its modality and writes metrics.json and report.html."""

from __future__ import annotations

from typing import Any

from genlab.config import sampling_options, with_given
from genlab.run import Run


def evaluate_run(run: Run, *, num_samples: int | None = None, seed: int | None = None,
                 **sampling: Any) -> dict[str, Any]:
    """Score the run's model on held-out data; `sampling` overrides the run's `eval.sampling`."""
    cfg = run.config
    ev = type(cfg.eval).model_validate(with_given(cfg.eval.model_dump(), num_samples=num_samples, seed=seed))
    options = sampling_options(cfg.model.family, with_given(ev.sampling, **sampling))
    modality = run.model.spec.modality  # what the model was trained on: image, text, or pairs
    if run.model.task == "tabular":
        from genlab.evaluation.tabular import evaluate_table

        return evaluate_table(run, ev, options)
    if run.model.task == "upscale":
        from genlab.evaluation.upscale import evaluate_upscaling

        return evaluate_upscaling(run, ev, options)
    if modality == "pairs":
        from genlab.evaluation.seq2seq import evaluate_pairs

        return evaluate_pairs(run, ev, options)
    if modality == "text":
        from genlab.evaluation.text import evaluate_text

        return evaluate_text(run, ev, options)
    from genlab.evaluation.metrics import evaluate_images

    return evaluate_images(run, ev, options)
