"""Evaluation: feature extractors, metrics and the scoring of a run."""

from genlab.evaluation.metrics import evaluate_run

__all__ = ["evaluate_run"]
