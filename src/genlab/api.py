"""The Python API; the CLI only wraps these. Each step reads and writes a run directory."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from genlab.config import RunConfig, flatten, load_config
from genlab.config.families import check_verb, family_class
from genlab.data.datamodule import TensorDataModule
from genlab.data.sources import load_dataset, prepares
from genlab.errors import GenlabError
from genlab.outputs import write_table
from genlab.quiet import quiet
from genlab.run import Run, RunPaths, write_json
from genlab.training.callbacks import NonFiniteLoss, Throughput, TrainingInterrupted
from genlab.training.checkpoints import checkpoint_step, newest_checkpoint, whole_checkpoint
from genlab.training.optim import lr_factor
from genlab.training.sharding import sharded_strategy
from genlab.training.trainer import build_trainer
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

    L.seed_everything(cfg.train.seed, verbose=False)
    dataset = load_dataset(_prepared(cfg.data))
    model, dataset = family_class(cfg.model.family).build(cfg.model, dataset, cfg.train)
    sharded = sharded_strategy(model, cfg.train) if cfg.train.strategy == "fsdp" else None
    parameters = model.num_parameters()  # before FSDP leaves each rank its shard
    trainer = build_trainer(cfg.train, paths, has_validation=len(dataset.val) > 0, monitor=model.monitor,
                            manual_optimization=not model.automatic_optimization,
                            callbacks=[*_augmentation(cfg, dataset), *callbacks],
                            judges=_judges(cfg, model, dataset, paths), strategy=sharded)
    if leader:  # only now, with data and model known good, does the run directory appear
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(cfg.to_yaml())
        for logger in trainer.loggers:  # the config as flat parameters, which MLflow and W&B compare runs by
            logger.log_hyperparams(flatten(cfg.model_dump(mode="json")))
        os.environ[_RUN_DIR_ENV] = str(paths.root.resolve())  # inherited by the ranks Lightning launches
    try:
        trainer.fit(model, datamodule=TensorDataModule(dataset, cfg.train.batch_size, cfg.train.seed),
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
            model = family_class(cfg.model.family).from_pretrained(paths.model)
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
    """The augment step of the data pipeline, as a callback that runs after the step is seeded."""
    from genlab.data.augment import augment_options
    from genlab.training.callbacks import AugmentBatches

    options = augment_options(cfg.data, dataset.spec.modality)
    return [] if options is None else [AugmentBatches(options)]


def _judges(cfg: RunConfig, model, dataset, paths: RunPaths) -> list[L.Callback]:
    """Callbacks that score the validated weights for the family: a GAN's mode-collapse watch."""
    if not model.watches_collapse or len(dataset.val) < 2:
        return []
    from genlab.evaluation.collapse import CollapseWatch

    return [CollapseWatch(dataset.train, dataset.val, dataset.spec.num_classes, model.config.collapse_samples,
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
def evaluate(run: Run | str | Path, **options: Any) -> dict[str, Any]:
    """Sample from the run, score the samples against held-out data, write metrics.json; return the metrics."""
    from genlab.evaluation import evaluate_run

    return evaluate_run(run if isinstance(run, Run) else Run(run), **options)


@quiet
def sample_to_file(run: Run | str | Path, n: int, out: str | Path | None = None, *, seed: int | None = 0,
                   **conditions: Any) -> Path:
    """Draw `n` samples and write them in the modality's file format (PNG grid, or text after its prompt)."""
    run = run if isinstance(run, Run) else Run(run)
    samples = run.sample(n, seed=seed, **conditions)
    if isinstance(samples, list) and isinstance(conditions.get("prompt"), str):
        samples = [conditions["prompt"] + s for s in samples]
    media = run.model.media
    out = Path(out) if out is not None else run.paths.samples / f"sample_{n}_seed{seed}{media.suffix}"
    return media.save(samples, out)


LATENT_MODES = ("reconstruct", "interpolate", "traverse")


@quiet
def translate_file(run: Run | str | Path, source: str | Path, out: str | Path | None = None, *, seed: int = 0,
                   **options: Any) -> list[dict[str, Any]]:
    """A seq2seq run over a JSONL file: each record's `data.source_field` in, the record with a `prediction`
    out (written to `out` as JSONL when given). A line that is not a record with that field is named."""
    run = run if isinstance(run, Run) else Run(run)
    check_verb(run.config.model.family, "translate", run.path)
    field, path = run.config.data.source_field, Path(source)
    if not path.is_file():
        raise GenlabError(f"source: {path} is not a file")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise GenlabError(f"source: {path}:{number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise GenlabError(f"source: {path}:{number} has no text field {field!r} (data.source_field)")
            records.append(record)
    predictions = run.sample(len(records), seed=seed, source=[r[field] for r in records], **options) if records else []
    done = [{**r, "prediction": p} for r, p in zip(records, predictions, strict=True)]
    if out is not None:
        Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done))
    return done


@quiet
def latent_grid(run: Run | str | Path, mode: str, n: int = 8, *, seed: int = 0, steps: int = 8,
                dims: list[int] | None = None, out: str | Path | None = None) -> Path:
    """A VAE's latent space as a PNG grid, from held-out images drawn by `seed`: `reconstruct` (a row of
    n originals over their reconstructions), `interpolate` (n rows from one image to another in `steps`),
    `traverse` (a row per latent dimension in `dims`, each swept over `steps` values from -3 to 3)."""
    from genlab.images import save_grid

    run = run if isinstance(run, Run) else Run(run)
    if mode not in LATENT_MODES:
        raise GenlabError(f"mode: {mode!r} is not one of: {', '.join(LATENT_MODES)}")
    check_verb(run.config.model.family, mode, run.path)
    model = run.model
    dataset = load_dataset(run.config.data)
    held_out = dataset.test if len(dataset.test) else dataset.val
    pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))
    images = held_out.x[pick[: 2 * n]] / 2 + 0.5
    if mode == "reconstruct":
        grid, columns = torch.cat([images[:n], model.reconstruct(images[:n])]), min(n, len(images))
    elif mode == "interpolate":
        pairs = images[: 2 * (len(images) // 2)].view(-1, 2, *images.shape[1:])[:n]
        grid, columns = torch.cat([model.interpolate(a, b, steps) for a, b in pairs]), steps
    else:
        values = torch.linspace(-3, 3, steps)
        dims = list(range(model.config.latent_dim)) if dims is None else dims
        grid, columns = torch.cat([model.traverse(d, values, base=images[0]) for d in dims]), steps
    out = Path(out) if out is not None else run.paths.samples / f"{mode}_seed{seed}.png"
    return save_grid(grid, out, nrow=columns, scale=4)


@quiet
def impute_file(run: Run | str | Path, source: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """Fill the missing cells of a CSV or parquet file with a tabular run; every row, column and present
    cell is written back as it was."""
    run, frame = _table_run_and_rows(run, source, "impute")
    return write_table(run.model.impute(frame, seed=seed, where=Path(source).name), out)


@quiet
def score_file(run: Run | str | Path, source: str | Path, out: str | Path, *, seed: int = 0) -> Path:
    """The input rows with an `anomaly_score` column (higher is more anomalous), in order."""
    run, frame = _table_run_and_rows(run, source, "score")
    scored = frame.assign(anomaly_score=run.model.score(frame, seed=seed, where=Path(source).name).to_numpy())
    return write_table(scored, out)


def _table_run_and_rows(run: Run | str | Path, source: str | Path, verb: str):
    from genlab.data.table import read_table

    run = run if isinstance(run, Run) else Run(run)
    check_verb(run.config.model.family, verb, run.path)
    frame, _ = read_table(Path(source), drop_empty=False)
    return run, frame


@quiet
def upscale_files(run: Run | str | Path, source: str | Path, out: str | Path | None = None
                  ) -> tuple[list[Path], list[str]]:
    """Upscale an image file, or every image in a folder, with an sr_gan run. Returns the files written
    and one line per input that could not be upscaled (the others are written all the same)."""
    from genlab.data.sources import IMAGE_SUFFIXES
    from genlab.images import read_image, write_image

    run = run if isinstance(run, Run) else Run(run)
    check_verb(run.config.model.family, "upscale", run.path)
    source = Path(source)
    scale = run.config.model.scale
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        folder = Path(out) if out is not None else source.with_name(f"{source.name}_x{scale}")
        targets = [folder / f"{f.stem}.png" for f in files]
    elif source.is_file():
        files, targets = [source], [Path(out) if out is not None else source.with_name(f"{source.stem}_x{scale}.png")]
    else:
        raise GenlabError(f"{source}: no such image file or folder")
    written, failed = [], []
    for file, target in zip(files, targets, strict=True):
        try:
            image = read_image(file)
            written.append(write_image(run.model.upscale(image[None], name=file.name)[0], target))
        except GenlabError as err:
            failed.append(str(err))
        except OSError as err:  # PIL's UnidentifiedImageError is one
            failed.append(f"{file.name}: not a readable image ({err.__class__.__name__})")
    return written, failed


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
    }
