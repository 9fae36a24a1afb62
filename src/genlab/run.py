"""The run directory: the contract between steps. Every path is named here, and only here.

    runs/<name>/
      config.yaml     the fully resolved config that produced this run
      checkpoints/    last.ckpt (resume), best.ckpt (lowest val/loss)
      model/          the trained model in its ecosystem's format (+ genlab.json)
      tb/             TensorBoard event files
      samples/        grids written during training and by `genlab sample`
      train.json      what training did: steps, time, throughput, losses
      metrics.json    what `genlab evaluate` measured
      report.html     the same, with sample grids and loss curves, in one self-contained page
"""

from __future__ import annotations

import inspect
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from genlab.config import RunConfig, load_config
from genlab.errors import GenlabError
from genlab.quiet import quiet

# which command writes each file, for the error that says it is missing
_MADE_BY = {
    "config": "genlab fit CONFIG",
    "model": "genlab fit CONFIG (it exports the model when training ends)",
    "last_checkpoint": "genlab fit CONFIG",
    "metrics": "genlab evaluate RUN_DIR",
}


class RunPaths:
    """Where each file of a run lives; the only place these names are spelled."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.checkpoints = self.root / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.ckpt"
        self.model = self.root / "model"
        self.tb = self.root / "tb"
        self.samples = self.root / "samples"
        self.summary = self.root / "train.json"
        self.metrics = self.root / "metrics.json"
        self.report = self.root / "report.html"
        self.eval_cache = self.root / "eval"

    def require(self, name: str) -> Path:
        """The path of `name`, or an error that says which file is missing and which command makes it."""
        path = getattr(self, name)
        if not path.exists():
            if not self.root.is_dir():
                raise GenlabError(f"{self.root}: no such run directory")
            raise GenlabError(f"{self.root}: missing {path.relative_to(self.root)}; run `{_MADE_BY[name]}` first")
        return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _check_conditions(model: Any, conditions: dict[str, Any]) -> None:
    """A keyword the family's `sample` does not take is a user mistake (a --prompt for an image model)."""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(model.sample).parameters.values()):
        return  # the family checks its own options
    taken = sample_keywords(model.sample)
    for key in conditions:
        if key not in taken:
            raise GenlabError(f"{key}: a {model.config.family} model does not take it (its samples take: "
                              f"{', '.join(taken)})")


def sample_keywords(sample: Any) -> list[str]:
    """The keyword arguments a family's `sample` takes (its options and conditions), the generator aside."""
    params = inspect.signature(sample).parameters
    return [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "generator"]


def load(path: str | Path) -> Run:
    """A run directory written by `fit`."""
    return Run(path)


def as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run(run)


PREPARED_MANIFEST = "prepared.json"  # what `genlab prepare` writes at the top of a prepared set


def describe(path: str | Path) -> dict[str, Any]:
    """What a run directory (family, size, data, training, metrics) or a prepared set (items, splits) is."""
    manifest = Path(path) / PREPARED_MANIFEST
    if not manifest.is_file():
        return Run(path).info()
    keys = ("name", "modality", "source", "read", "items", "splits", "class_names", "labels")
    return {k: v for k, v in json.loads(manifest.read_text()).items() if k in keys}


class Run:
    """A trained run: its config, its model (loaded on first use, without Lightning) and its records."""

    trained = True  # False when `fit` returns a run it found complete and left as it was

    def __init__(self, path: str | Path) -> None:
        self.paths = RunPaths(Path(path))
        self.config: RunConfig = load_config(self.paths.require("config"))

    @property
    def path(self) -> Path:
        return self.paths.root

    @cached_property
    @quiet
    def model(self):
        from genlab.config.families import family_class

        model_dir = self.paths.require("model")
        return family_class(self.config.model.family).load(model_dir, self.config.eval.sampling)

    def sample(self, n: int, *, seed: int | None = None, **given: Any) -> Any:
        """`n` samples from the exported model with its sampling options (the run's eval.sampling, kept in the
        model folder) updated by those `given`, and the conditions given (labels, a prompt...); the same seed gives
        the same samples."""
        import torch

        from genlab.config import sampling_options

        model = self.model
        _check_conditions(model, given)
        fields = model.Sampling.model_fields  # an option given as None is not given, as everywhere
        options = sampling_options(self.config.model.family, {
            **model.sampling, **{k: v for k, v in given.items() if k in fields and v is not None}})
        conditions = {k: v for k, v in given.items() if k not in fields}
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return model.sample(n, generator=generator, **conditions, **options)

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling options the model folder keeps (the run's eval.sampling), read without loading the model."""
        meta = read_json(self.paths.model / "genlab.json")
        return meta.get("sampling", self.config.eval.sampling)

    @property
    def summary(self) -> dict[str, Any]:
        return read_json(self.paths.summary)

    @property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.paths.metrics)

    def info(self) -> dict[str, Any]:
        """What the run is: family, size, data, training done, metrics."""
        cfg = self.config
        return {
            "run": str(self.path),
            "family": cfg.model.family,
            "parameters": self.summary.get("parameters"),
            "data": {"source": cfg.data.source, **({"path": str(cfg.data.path)} if cfg.data.path else {}),
                     **self.summary.get("data", {})},
            "training": {k: self.summary.get(k) for k in ("steps", "max_steps", "seconds", "stopped_because",
                                                          "trained_precision", "train_loss", "val_loss",
                                                          "samples_per_s", "tokens_per_s", "mfu")
                         if k != "tokens_per_s" or self.summary.get(k)},
            "model_exported": self.paths.model.is_dir(),
            "sampling": self.sampling,
            "metrics": self.metrics or None,
        }

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, family={self.config.model.family!r})"
