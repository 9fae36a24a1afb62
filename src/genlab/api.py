"""The Python API of the steps every family shares: fit, sample, evaluate, and the model card and filters that
follow them; the CLI only wraps these. Each step reads and writes a run directory. What only some families can do
(upscale, impute, translate...) is its capability's (`genlab/capabilities`)."""

from __future__ import annotations

import inspect
import logging
import os
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from genlab.capabilities import audit_of, evaluators, headline, hub_task
from genlab.config import RunConfig, chosen_sampling, flatten, load_config, sampling_options, with_given
from genlab.config.families import family_class
from genlab.data.datamodule import data_module
from genlab.data.sources import load_dataset, prepares
from genlab.errors import GenlabError
from genlab.quiet import quiet
from genlab.run import Run, RunPaths, as_run, write_json
from genlab.training.callbacks import NonFiniteLoss, Throughput, TrainingInterrupted
from genlab.training.checkpoints import checkpoint_step, newest_checkpoint, whole_checkpoint
from genlab.training.optim import lr_factor
from genlab.training.sharding import sharded_strategy
from genlab.training.trainer import build_trainer, precision_here
from genlab.version import __version__

log = logging.getLogger("genlab")


@quiet
def fit(config: str | Path | dict | RunConfig | None = None, *, overrides: list[str] | tuple = (),
        out: str | Path | None = None, resume: str | Path | None = None,
        callbacks: list[L.Callback] | tuple = ()) -> Run:
    """Train the config's family on its data into a run directory; export the model; return the Run.

    `resume` continues a run from its last checkpoint to the same final step, with the run's own
    config (plus `overrides`) unless `config` is given. `callbacks` are extra Lightning callbacks.
    """
    # Under DDP every process runs this function (Lightning relaunches the command, or torchrun
    # starts them all); rank zero owns the run directory and the others join the one it chose.
    leader = rank_zero_only.rank == 0
    cfg, paths, checkpoint = _resolve(config, overrides, out, resume, leader)
    if checkpoint is not None:
        done = checkpoint_step(checkpoint)
        if done >= cfg.train.max_steps:
            return _finished(cfg, paths, checkpoint, done)
        log.info(f"resuming from {checkpoint.relative_to(paths.root)} at step {done}")
        _warn_if_schedule_moves(load_config(paths.config), cfg, done)
    asked = cfg  # config.yaml keeps what was asked; a resume on another machine decides its precision again
    cfg = cfg.model_copy(update={"train": precision_here(cfg.train)})

    L.seed_everything(cfg.train.seed, verbose=False)
    dataset = load_dataset(_prepared(cfg.data))
    model, dataset = family_class(cfg.model.family).build(cfg.model, dataset, cfg.train)
    model.sampling = chosen_sampling(cfg.model.family, cfg.eval.sampling)  # kept in the model folder, used everywhere
    sharded = sharded_strategy(model, cfg.train) if cfg.train.strategy == "fsdp" else None
    parameters = model.num_parameters()  # before FSDP leaves each rank its shard
    trainer = build_trainer(cfg.train, paths, has_validation=len(dataset.val) > 0, monitor=model.monitor,
                            manual_optimization=not model.automatic_optimization,
                            callbacks=[*_augmentation(cfg, dataset), *callbacks],
                            judges=_judges(cfg, model, dataset, paths), strategy=sharded)
    if leader:  # only now, with data and model known good, does the run directory appear
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(asked.to_yaml())
        for logger in trainer.loggers:  # the config as flat parameters, which MLflow and W&B compare runs by
            logger.log_hyperparams(flatten(cfg.model_dump(mode="json")))
        os.environ[_RUN_DIR_ENV] = str(paths.root.resolve())  # inherited by the ranks Lightning launches
    try:
        trainer.fit(model, datamodule=data_module(dataset, cfg.train.batch_size, cfg.train.seed),
                    ckpt_path=checkpoint)
        os.environ.pop(_RUN_DIR_ENV, None)  # launched ranks have read it; a later fit must not
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning answers Ctrl-C with sys.exit(1) from inside fit; say instead how to go on
        raise TrainingInterrupted(f"interrupted at step {trainer.global_step}; continue from the last checkpoint "
                                  f"with: genlab fit --resume {paths.root}") from None
    except NonFiniteLoss as err:
        kept = (f"{paths.last_checkpoint} (written before step {err.step}) is intact"
                if paths.last_checkpoint.exists() else "no checkpoint was written yet")
        raise NonFiniteLoss(f"{err}; training stopped before that update and {kept}. Try a lower "
                            "train.optimizer.lr, a train.grad_clip, or train.precision: 32-true", err.step) from None

    whole = trainer.strategy.full_state_dict() if sharded else None  # every rank sends its shard to rank zero
    if trainer.is_global_zero:  # under DDP every rank gets here; one writes
        # Lightning has copied the EMA weights into the model at the end of training
        if whole is None:
            model.save_pretrained(paths.model)
        else:  # the model's own modules are wrapped shards: the folder is written from the gathered weights,
            model.save_pretrained(paths.model, state_dict=whole)  # and it is the folder that draws the preview
            model = family_class(cfg.model.family).load(paths.model)
        model.eval()
        if cfg.train.grid_size:
            model.media.save(model.preview(cfg.train.grid_size, torch.Generator().manual_seed(0)),
                             paths.samples / f"final{model.media.suffix}")
        write_json(paths.summary, _summary(trainer, model, dataset, parameters))
    trainer.strategy.barrier("genlab-export")
    return Run(paths.root)


_RUN_DIR_ENV = "GENLAB_RUN_DIR"


def _prepared(data):
    """The data config to train on: a user's files go through `genlab prepare`'s pipeline first (into the
    cache, once: a second run reuses it), so training reads the set prepare wrote; other sources as they are."""
    if not prepares(data) or data.prepared is not None:
        return data
    from genlab.prepare import cached

    return data.model_copy(update={"prepared": cached(data)})


def _augmentation(cfg: RunConfig, dataset) -> list:
    """The augment step of the data pipeline, as a callback that runs after the step is seeded; data whose kind
    does not augment (anything but images) is left as it is, with a warning."""
    from genlab.data.augment import augment_options
    from genlab.prepare.kinds import kind_of
    from genlab.training.callbacks import AugmentBatches

    options, kind = augment_options(cfg.data), kind_of(dataset.spec.modality)
    if options is not None and not (kind is not None and kind.augments):
        log.warning(f"data.pipeline: augment applies to images; this {dataset.spec.modality} data is left as it is")
        return []
    return [] if options is None else [AugmentBatches(options)]


def _judges(cfg: RunConfig, model, dataset, paths: RunPaths) -> list[L.Callback]:
    """Callbacks that score the validated weights for the family: a GAN's mode-collapse watch."""
    if not model.collapse_samples or len(dataset.val) < 2:
        return []
    from genlab.data.streamed_items import in_memory
    from genlab.evaluation.collapse import CollapseWatch

    # a streamed set's training items as evaluate reads them: the same feature net scores both
    return [CollapseWatch(in_memory(dataset.train), dataset.val, dataset.spec.num_classes, model.collapse_samples,
                          cfg.eval.feature_steps, paths.eval_cache)]


def _resolve(config, overrides, out, resume, leader: bool) -> tuple[RunConfig, RunPaths, Path | None]:
    """The config, the run directory and the checkpoint to resume from, checked before anything is written."""
    if resume is not None:
        paths = RunPaths(Path(resume))
        checkpoint = newest_checkpoint(paths)
        return load_config(config if config is not None else paths.require("config"), overrides), paths, checkpoint
    cfg = load_config(config, overrides)
    if out is None and not leader:
        out = os.environ.get(_RUN_DIR_ENV)
        if out is None:  # torchrun or srun started this rank, not a rank zero that chose the directory
            raise GenlabError(f"rank {rank_zero_only.rank}: the ranks of this launch were started together, so "
                              "none can choose the run directory for the others: give every rank --out DIR")
    paths = RunPaths(Path(out) if out is not None else _fresh_run_dir(Path("runs"), cfg.name))
    if leader and paths.root.is_dir() and any(paths.root.iterdir()):
        raise GenlabError(f"{paths.root}: already holds a run; continue it with --resume {paths.root}, "
                          "or choose another --out")
    return cfg, paths, None


@quiet
def evaluate(run: Run | str | Path, *, num_samples: int | None = None, seed: int | None = None,
             **sampling: Any) -> dict[str, Any]:
    """Score the run's model on held-out data, each of its capabilities its own way, with the model's sampling
    options updated by `sampling`; write metrics.json and report.html; return the metrics."""
    from genlab.evaluation.report import write_report

    run = as_run(run)
    cfg = run.config
    ev = type(cfg.eval).model_validate(with_given(cfg.eval.model_dump(), num_samples=num_samples, seed=seed))
    options = sampling_options(cfg.model.family, {**run.model.sampling, **with_given({}, **sampling)})
    parts = [score(run, ev, options) for score in evaluators(cfg.model.family)]
    if not parts:
        raise GenlabError(f"evaluate: a {cfg.model.family} model has no capability that genlab scores")
    metrics = {k: v for part in parts for k, v in part.metrics.items()}
    write_json(run.paths.metrics, metrics)
    write_report(run, [row for p in parts for row in p.rows], [row for p in parts for row in p.setup],
                 "".join(p.html for p in parts))
    return metrics


@quiet
def sample_to_file(run: Run | str | Path, n: int, out: str | Path | None = None, *, seed: int | None = 0,
                   **conditions: Any) -> Path:
    """Draw `n` samples and write them in the modality's file format (a PNG grid, texts after their prompt...)."""
    run = as_run(run)
    model = run.model
    samples = model.shown(run.sample(n, seed=seed, **conditions), **conditions)
    out = Path(out) if out is not None else run.paths.samples / f"sample_{n}_seed{seed}{model.media.suffix}"
    return model.media.save(samples, out)


def _fresh_run_dir(root: Path, name: str) -> Path:
    path, i = root / name, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = root / f"{name}-{i}"
    return path


def _finished(cfg: RunConfig, paths: RunPaths, checkpoint: Path, done: int) -> Run:
    """Resuming a run that reached its max_steps: nothing to train. Finish its export if a kill
    interrupted it (from the checkpoint's weights, EMA's when on), else change nothing on disk."""
    if not (paths.model / "genlab.json").is_file() or not paths.summary.is_file():
        model, _ = family_class(cfg.model.family).build(cfg.model, load_dataset(cfg.data), cfg.train)
        model.sampling = chosen_sampling(cfg.model.family, cfg.eval.sampling)
        state = whole_checkpoint(checkpoint)
        model.load_state_dict(state["state_dict"])  # EMA weights when EMA is on (current_model_state: raw)
        model.save_pretrained(paths.model)
        clock = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("Throughput")), None)
        throughput = Throughput(torch.float32, 1)
        if clock:
            throughput.load_state_dict(clock)
        write_json(paths.summary, {"steps": done, "max_steps": cfg.train.max_steps, **throughput.summary(),
                                   "stopped_because": "max_steps", "parameters": model.num_parameters(),
                                   "note": "exported from checkpoints/last.ckpt by a resume"})
        log.info(f"run complete at step {done}: exported its model from the last checkpoint")
    else:
        log.info(f"run complete at step {done} of {cfg.train.max_steps}; nothing changed. Train further with: "
                 f"genlab fit --resume {paths.root} --set train.max_steps={2 * done}")
    run = Run(paths.root)
    run.trained = False
    return run


def _warn_if_schedule_moves(before: RunConfig, after: RunConfig, done: int) -> None:
    """A cosine curve spans max_steps: extending a run re-lays it, so the lr jumps where training resumes."""
    old, new = before.train, after.train
    if new.schedule.name != "cosine" or old.max_steps == new.max_steps:
        return
    lr_then = old.optimizer.lr * lr_factor(old.schedule, old.max_steps)(done)
    lr_now = new.optimizer.lr * lr_factor(new.schedule, new.max_steps)(done)
    log.warning(f"train.schedule cosine spans train.max_steps, which moves from {old.max_steps} to {new.max_steps}: "
                f"the learning rate jumps from {lr_then:.3g} to {lr_now:.3g} at step {done}, so this run will differ "
                f"from one set to {new.max_steps} steps from the start (constant and step schedules extend exactly)")


def _summary(trainer: L.Trainer, model, dataset, parameters: int) -> dict[str, Any]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    early = trainer.early_stopping_callback
    if trainer.global_step >= trainer.max_steps:
        stopped = "max_steps"
    elif early is not None and early.stopping_reason_message:
        stopped = "early_stopping"
    else:
        stopped = "max_time"
    return {
        "steps": trainer.global_step,
        "max_steps": trainer.max_steps,
        "stopped_because": stopped,
        "early_stopping": early.stopping_reason_message if early is not None else None,
        "train_loss": metrics.get("train/loss"),
        "val_loss": metrics.get("val/loss"),
        **(throughput.summary() if throughput else {}),  # seconds, samples/s, peak: totals over every fit call
        "parameters": parameters,
        "data": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test),
                 "shape": list(dataset.spec.shape), "classes": dataset.spec.num_classes, "notes": dataset.notes},
        "versions": {"genlab": __version__, "torch": torch.__version__, "lightning": L.__version__,
                     "python": platform.python_version()},
        "device": str(model.device),
        "trained_precision": str(trainer.precision),  # a CPU without bf16 kernels trains bf16 in 32-true
    }


@quiet
def audit(run: Run | str | Path, n: int | None = None, **options: Any) -> dict[str, Any]:
    """The audit the run's capabilities declare (by class, by a table's group, by the groups a text names), written
    beside its other results (audit.json, audit.html); an option it does not take (None: not given) is refused
    before anything is sampled."""
    from genlab.responsible.audit import OPTIONS, TARGETS

    run = as_run(run)
    family = run.config.model.family
    given = {k: v for k, v in options.items() if v is not None}
    if given.get("target", "data") not in TARGETS:
        raise GenlabError(f"--target: {given['target']!r} is not one of {', '.join(TARGETS)}")
    audit_run = audit_of(family)
    if audit_run is None:
        raise GenlabError(f"audit: {run.path} is a run of the {family} family, which has no audit yet")
    takes = [name for name in inspect.signature(audit_run).parameters if name in OPTIONS]
    for key in given:
        if key not in takes:
            raise GenlabError(f"--{key.replace('_', '-')}: the {family} family's audit does not take it; it takes "
                              f"{', '.join('--' + t.replace('_', '-') for t in takes) or 'no options'}")
    return audit_run(run, n, **given)


def card(run: Run | str | Path, license: str = "other") -> Path:
    """Write (or rewrite) the run's model card, model/README.md in the Hugging Face format; returns the file."""
    from genlab.responsible.card import Declared, write_card

    run = as_run(run)
    family = run.config.model.family
    return write_card(run, Declared(headline(family), hub_task(family), audit_of(family) is not None), license)


def filter_text(source: str | Path, action: str = "flag", kinds: list[str] | tuple = (), threshold: float = 0.8,
                model: str | Path | None = None, min_chars: int = 50, out: str | Path | None = None
                ) -> tuple[str, list, Path | None]:
    """Personal data, offensive sentences and (with `model`) copies of its training text in a text file, each a
    Finding with its place; `action` redact writes the text with them taken out (to `out`, by default beside it).
    Returns (the text, the findings, the file written or None)."""
    from genlab.responsible.filters import chosen_kinds, find, redact
    from genlab.responsible.memorization import INDEX_FILE, CopyIndex
    from genlab.serving.folders import model_folder

    copies = None
    if model is not None:
        copies = CopyIndex.load(model_folder(model)[0])
        if copies is None:
            raise GenlabError(f"--model {model}: its folder has no training-text index ({INDEX_FILE}); text "
                              "models fitted by this genlab keep one")
    chosen = chosen_kinds(kinds, copies)
    if action not in ACTIONS:
        raise GenlabError(f"--action: {action!r} is not one of {', '.join(ACTIONS)}")
    source = Path(source)
    if not source.is_file():
        raise GenlabError(f"{source}: no such file")
    text = source.read_text(errors="replace")
    findings = find(text, chosen, threshold, copies, min_chars)
    if action != "redact":
        return text, findings, None
    target = Path(out) if out is not None else source.with_name(f"{source.stem}.redacted{source.suffix}")
    target.write_text(redact(text, findings))
    return text, findings, target


def filter_images(folder: str | Path, model: str | Path | None, action: str = "flag", out: str | Path | None = None
                  ) -> tuple[list[Path], list[Path]]:
    """The images under `folder` that copy a training image of `model` (by the copy check `genlab evaluate` keeps),
    and every image read; `action` redact copies the others to `out`."""
    import shutil

    from genlab.responsible.filters import copied_images
    from genlab.serving.folders import model_folder

    folder = Path(folder)
    if model is None:
        raise GenlabError(f"{folder}: images are checked for copies of a model's training images: --model RUN")
    if action not in ACTIONS:
        raise GenlabError(f"--action: {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "redact" and out is None:
        raise GenlabError("--action redact on images writes the images that are not copies to --out DIR")
    copied, read = copied_images(folder, model_folder(model)[0])
    if action == "redact":
        for path in sorted(set(read) - set(copied)):
            target = Path(out) / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return copied, read


ACTIONS = ("flag", "redact", "refuse")
