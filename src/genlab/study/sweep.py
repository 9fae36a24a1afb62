"""Hyperparameter sweeps on Optuna: each trial an ordinary run directory, the study in Optuna's journal file.

    genlab sweep CONFIG --space SPACE.yaml --trials N [--budget S] [--jobs J] [--objective KEY] --out DIR
    genlab sweep DIR --status

SPACE.yaml maps any config key to a distribution:

    train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    train.batch_size: {int: [16, 128], log: true}
    model.block_out_channels: {choice: [[16, 32], [32, 64]]}
    train.ema.decay: {uniform: [0.99, 0.9999]}

The objective is the family's monitor (its best validation value, lower is better) unless `--objective` names a
figure of metrics.json, which each trial then evaluates (its direction from the family's headline figures, or
`--direction`). Every validation reports the monitor to the trial, and the pruner (median or Hyperband) may stop
it there; under DDP rank zero decides and tells the others. The journal file takes parallel workers without the
locking trouble of SQLite, so `--jobs J` starts J processes on one study; a sweep that is run again goes on where
it stopped: finished trials stay, and one whose process died is failed and its parameters tried again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from genlab.capabilities import headline as headline_of
from genlab.config import load_config
from genlab.config.families import family_class
from genlab.errors import ConfigError, GenlabError
from genlab.evaluation.figures import metric_at
from genlab.quiet import quiet
from genlab.run import Run, read_json, write_json

log = logging.getLogger("genlab")
KINDS = ("log_uniform", "uniform", "int", "choice")
JOURNAL, SETTINGS = "study.journal", "sweep.json"
TRIAL_ENV = "GENLAB_SWEEP_TRIAL"  # the trial rank zero trains, inherited by the ranks Lightning launches for it


def read_space(path: str | Path) -> dict[str, tuple[str, Any, bool]]:
    """SPACE.yaml as {config key: (kind, bounds or choices, log)}; a GenlabError names a malformed entry."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"--space: {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GenlabError(f"--space: {path} is not YAML ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise GenlabError(f"--space: {path} holds no keys; map config keys to {{{' | '.join(KINDS)}: ...}}")
    space = {}
    for key, spec in raw.items():
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in KINDS:
            raise GenlabError(f"--space: {key}: give one of {', '.join(KINDS)}, e.g. {{log_uniform: [1e-4, 1e-2]}}")
        value = spec[kind]
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise GenlabError(f"--space: {key}: choice takes a list of values")
        elif not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)
                  and value[0] < value[1] and (kind != "log_uniform" or value[0] > 0)):
            raise GenlabError(f"--space: {key}: {kind} takes [low, high] with low < high"
                              + (" and low > 0" if kind == "log_uniform" else ""))
        space[str(key)] = (kind, value, kind == "log_uniform" or bool(spec.get("log", False)))
    return space


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as `key=value` overrides (values in JSON, which the override parser reads as YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def suggest(trial: Any, space: dict[str, tuple[str, Any, bool]]) -> dict[str, Any]:
    params = {}
    for key, (kind, value, log_scale) in space.items():
        if kind == "choice":
            picked = trial.suggest_categorical(key, [json.dumps(v) for v in value])  # lists are not categories
            params[key] = json.loads(picked)
        elif kind == "int":
            params[key] = trial.suggest_int(key, int(value[0]), int(value[1]), log=log_scale)
        else:
            params[key] = trial.suggest_float(key, float(value[0]), float(value[1]), log=log_scale)
    return params


class ReportToTrial(L.Callback):
    """Each validation's monitor value to the Optuna trial; stops training when the pruner says so. Under DDP
    only rank zero talks to the study, and its decision is broadcast, so every rank stops at the same step."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.values: list[float] = []
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and value is not None:
            self.values.append(float(value))
            self.trial.report(float(value), trainer.global_step)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned, trainer.should_stop = True, True


@quiet
def sweep(config: str | Path, *, space: str | Path, trials: int, out: str | Path, budget: float | None = None,
          jobs: int = 1, objective: str | None = None, direction: str | None = None, pruner: str = "median",
          seed: int = 0, changes: list[str] | tuple = ()) -> dict[str, Any]:
    """Run (or go on with) a study of `trials` trials around `config` (with `changes`, `--set` overrides, applied);
    returns its status (best trials, importances)."""
    out = Path(out)
    settings = _settings(load_config(config, changes), space, trials, budget, objective, direction, pruner, seed)
    out.mkdir(parents=True, exist_ok=True)
    kept = read_json(out / SETTINGS)
    if kept and {k: kept[k] for k in ("config", "space", "objective")} != {k: settings[k] for k in (
            "config", "space", "objective")}:
        raise GenlabError(f"--out {out}: it holds a sweep of another config, space or objective; give a new --out")
    if _launched_rank():
        return _join_trial(out)
    write_json(out / SETTINGS, {**kept, **settings})
    if not kept:
        _enqueue_config(out, settings)
    if jobs > 1:
        _run_workers(out, jobs)
    else:
        work(out, worker=int(os.environ.get("GENLAB_SWEEP_WORKER", "0")))
    return status(out)


def _settings(config, space, trials, budget, objective, direction, pruner, seed) -> dict[str, Any]:
    cfg = load_config(config)
    parsed = read_space(space)
    for key, (kind, value, _) in parsed.items():  # every key must be one the config takes, at both ends
        for probe in (value if kind == "choice" else value):
            try:
                load_config(config, overrides({key: int(probe) if kind == "int" else probe}))
            except ConfigError as err:
                raise GenlabError(f"--space: {key}: {err}") from None
    family = family_class(cfg.model.family)
    if objective is None or objective == family.monitor:
        objective, derived = family.monitor, "minimize"
    else:
        figure = next((f for f in headline_of(cfg.model.family) if f.key == objective), None)
        derived = None if figure is None else ("maximize" if figure.higher_is_better else "minimize")
    direction = direction or derived
    if direction not in ("minimize", "maximize"):
        raise GenlabError(f"--objective {objective}: not a headline figure of the {cfg.model.family} family "
                          f"({', '.join(f.key for f in headline_of(cfg.model.family))}); say --direction minimize "
                          "or maximize")
    if pruner not in ("median", "hyperband", "none"):
        raise GenlabError(f"--pruner: {pruner!r} is not one of median, hyperband, none")
    return {"config": cfg.model_dump(mode="json"), "space": {k: [*v] for k, v in parsed.items()},
            "trials": trials, "budget": budget, "objective": objective, "direction": direction,
            "monitor": family.monitor, "pruner": pruner, "seed": seed}


def _enqueue_config(out: Path, settings: dict[str, Any]) -> None:
    """The config as written is the study's first trial when its values lie in the space: the baseline that the
    search must beat."""
    values = {}
    for key, (kind, bounds, _) in settings["space"].items():
        value = metric_at(settings["config"], key)
        inside = value in bounds if kind == "choice" else (
            isinstance(value, int | float) and bounds[0] <= value <= bounds[1])
        if not inside:
            return
        values[key] = json.dumps(value) if kind == "choice" else value
    study_of(out, settings).enqueue_trial(values)


def _run_workers(out: Path, jobs: int) -> None:
    """`jobs` processes on the one study, the machine's cores shared between them."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    procs = [subprocess.Popen([sys.executable, "-m", "genlab", "sweep", str(out), "--work"],
                              env={**os.environ, "GENLAB_SWEEP_WORKER": str(i), "OMP_NUM_THREADS": str(threads)})
             for i in range(jobs)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise GenlabError(f"sweep: worker(s) {', '.join(map(str, failed))} stopped with an error (above)")


def study_of(out: Path, settings: dict[str, Any] | None = None, worker: int = 0) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    settings = settings or read_json(out / SETTINGS)
    if not settings:
        raise GenlabError(f"{out}: not a sweep folder (no {SETTINGS}); start one with genlab sweep CONFIG ...")
    warmup = settings["config"]["train"]["max_steps"] // 4  # no trial is judged on its first quarter
    pruners = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup),
               "hyperband": optuna.pruners.HyperbandPruner(), "none": optuna.pruners.NopPruner()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name="genlab", storage=JournalStorage(JournalFileBackend(str(out / JOURNAL))), load_if_exists=True,
        direction=settings["direction"], pruner=pruners[settings["pruner"]],
        sampler=optuna.samplers.TPESampler(seed=settings["seed"] + worker, n_startup_trials=4))


def work(out: Path, worker: int = 0) -> None:
    """Ask, train and tell until the study holds its trials (finished, pruned or running)."""
    from filelock import FileLock
    from optuna.trial import TrialState

    if _launched_rank():
        _join_trial(out)
        return
    settings = read_json(out / SETTINGS)
    study = study_of(out, settings, worker)
    while True:
        with FileLock(out / "ask.lock"):  # counting and asking as one step: parallel workers never overshoot
            _retry_dead(study, out)
            counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                               TrialState.RUNNING))
            if len(counted) >= settings["trials"]:
                _tell_ranks(-1)
                return
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", platform.node())
        _tell_ranks(trial.number)
        try:
            _run_trial(study, trial, settings, out)
        except BaseException:  # Ctrl-C or an error of genlab's own: this trial is tried again next time
            with FileLock(out / "ask.lock"):
                if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
                    study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params)
            raise


def _run_trial(study: Any, trial: Any, settings: dict[str, Any], out: Path) -> None:
    from optuna.trial import TrialState

    from genlab.api import evaluate, fit

    params = suggest(trial, {k: tuple(v) for k, v in settings["space"].items()})
    folder = out / "trials" / f"{trial.number:03d}"
    trial.set_user_attr("run", str(folder))
    report = ReportToTrial(trial, settings["monitor"])
    os.environ[TRIAL_ENV] = str(trial.number)
    try:
        run = fit(settings["config"], overrides=_trial_overrides(settings, params), out=folder, callbacks=[report])
        if report.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(f"sweep: trial {trial.number} pruned at validation {len(report.values)}")
            return
        if settings["objective"] == settings["monitor"]:
            if not report.values:
                raise GenlabError(f"the run reported no {settings['monitor']}: give it a validation split")
            value = min(report.values)
        else:
            value = metric_at(evaluate(run), settings["objective"])
            if value is None:
                raise GenlabError(f"metrics.json of {folder} holds no {settings['objective']}")
        study.tell(trial, float(value))
        log.info(f"sweep: trial {trial.number}: {settings['objective']} {value:.4g} with {params}")
    except (GenlabError, ValueError, RuntimeError) as err:  # a point of the space that cannot train: the next
        trial.set_user_attr("error", str(err)[:500])
        study.tell(trial, state=TrialState.FAIL)
        log.warning(f"sweep: trial {trial.number} failed: {err}")


def _trial_overrides(settings: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """A trial's parameters, and the sweep's training budget, as overrides of the swept config."""
    budget = [] if settings["budget"] is None else [f"train.max_time={settings['budget']}"]
    return [*overrides(params), *budget]


def _launched_rank() -> bool:
    """Whether this process is a rank that Lightning launched for a trial of another process (DDP)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank != 0 and TRIAL_ENV in os.environ


def _join_trial(out: Path) -> dict[str, Any]:
    """Train the trials that rank zero trains, as one of its ranks: the same parameters and run directory. Only
    rank zero talks to the study: this rank reports nothing and follows its pruning decisions. The first trial's
    number comes with the launch; the next ones over the process group, which stays up between fits."""
    from genlab.api import fit

    settings = read_json(out / SETTINGS)
    number = int(os.environ[TRIAL_ENV])
    while number >= 0:
        trial = study_of(out, settings).trials[number]
        fit(settings["config"], overrides=_trial_overrides(settings, _params(trial)),
            out=out / "trials" / f"{number:03d}", callbacks=[ReportToTrial(trial, settings["monitor"])])
        number = _tell_ranks(None)
    return {}


def _tell_ranks(number: int | None) -> int:
    """Rank zero sends the next trial's number (-1: none) to ranks launched for an earlier trial; they receive
    it. Nothing to do before the first DDP fit has set up the process group."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return -1 if number is None else number
    sent = [number]
    dist.broadcast_object_list(sent, src=0)
    return sent[0]


def _retry_dead(study: Any, out: Path) -> None:
    """Fail the running trials whose process on this machine has died (a killed sweep), and queue their
    parameters again; their partial run directories go."""
    import shutil

    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        # a worker asks and names itself under the ask lock, which is held here: a running trial that has no
        # name lost its worker in between (a kill right after `ask`), and would otherwise count forever
        if pid is not None and host is not None and (host != platform.node() or _alive(pid)):
            continue
        # the journal storage has no heartbeat, so the trial is closed through its storage, as Optuna's own
        # RetryFailedTrialCallback does for storages that have one
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params)
        if t.user_attrs.get("run"):
            shutil.rmtree(t.user_attrs["run"], ignore_errors=True)
        log.info(f"sweep: trial {t.number}'s process is gone; " + (
            "its parameters are queued again" if t.params else "it drew no parameters, so none are queued"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(out: str | Path, top: int = 5) -> dict[str, Any]:
    """The study's counts, best trials and parameter importances; writes sweep.html."""
    from optuna.trial import TrialState

    out = Path(out)
    settings = read_json(out / SETTINGS)
    study = study_of(out, settings)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ordered = sorted(done, key=lambda t: t.value, reverse=settings["direction"] == "maximize")
    result = {
        "objective": settings["objective"], "direction": settings["direction"], "trials": settings["trials"],
        "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "best": [{"number": t.number, "value": t.value, "params": _params(t), "run": t.user_attrs.get("run")}
                 for t in ordered[:top]],
        "history": [{"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "last": _last_reported(t)} for t in trials],
        "importances": _importances(study, len(done)),
    }
    write_json(out / "sweep_status.json", result)
    from genlab.evaluation.report import write_sweep_report

    # a trial added to the study by hand (a warm start from known results) has no run directory to preview
    best = next((Run(b["run"]) for b in result["best"] if b["run"]), None)
    write_sweep_report(out / "sweep.html", result, _best_samples(best))
    return result


def _params(trial: Any) -> dict[str, Any]:
    """A trial's parameters as config values (choices are kept as JSON, since Optuna's categories are scalars)."""
    from optuna.distributions import CategoricalDistribution

    return {k: json.loads(v) if isinstance(trial.distributions[k], CategoricalDistribution) else v
            for k, v in trial.params.items()}


def _last_reported(trial: Any) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _importances(study: Any, complete: int) -> dict[str, float]:
    """fANOVA importances (Optuna's default evaluator) once enough trials have finished; {} before."""
    import optuna

    if complete < 3:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # every finished trial at one point of the space: nothing to apportion
        return {}


def _best_samples(run: Run | None) -> str:
    if run is None or not run.paths.model.is_dir():
        return ""
    from genlab.study.bakeoff import preview

    return preview(run, read_json(run.paths.metrics))
