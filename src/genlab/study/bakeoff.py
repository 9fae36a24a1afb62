"""Architecture selection: the bake-off, several families (or recipes) on the same data for the same budget.

    genlab bakeoff ENTRY... --budget SECONDS --out DIR

An entry is a run config, or a family name (the first config's data and training with that family's
defaults). Every entry trains on the first entry's data section and is evaluated with its eval
section (sample count, seed), so one extractor scores them all. The budget is training time: a short
calibration fit measures each entry's seconds per step on this machine, and its step count and
schedule are set to what the budget holds, so a cosine anneals within it rather than being cut off.
Each entry is an ordinary run directory under DIR, to sample, evaluate or serve like any other;
bakeoff.json and bakeoff.html put them side by side. Running again reuses finished entries and
resumes one that was interrupted.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from genlab.capabilities import headline as headline_of
from genlab.config import RunConfig, load_config
from genlab.config.families import family_names
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.quiet import quiet
from genlab.run import Run, RunPaths, read_json, write_json

log = logging.getLogger("genlab")
CALIBRATION_STEPS = 30  # the Throughput callback skips the first batch; the first dozen still run slow
@quiet
def bakeoff(entries: list[str | Path], *, budget: float, out: str | Path,
            overrides: list[str] | tuple = ()) -> dict[str, Any]:
    """Train and evaluate each entry on the same data for `budget` seconds of training; write bakeoff.json/html."""
    if budget <= 0:
        raise GenlabError(f"budget: {budget} seconds; give a positive training time per entry")
    configs = entry_configs(entries, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from genlab.api import fit

    headline = headline_of(configs[0][1].model.family)  # the first entry's figures rank every entry
    rows, previews, warm = [], {}, False
    for name, cfg in configs:
        run = _done_or_resumed(out / name)
        if run is None:
            if not warm:  # a process's first fit runs slow (kernels, allocator, threads): measure the second
                _steps_for(name, cfg, budget, out / ".calibration")
                warm = True
            steps = _steps_for(name, cfg, budget, out / ".calibration")
            log.info(f"bakeoff: {name} gets {steps} steps in {budget:g} s")
            run = fit(budgeted(cfg, steps, budget), out=out / name)
        metrics = _evaluated(run, out, configs[0][0])
        rows.append(_row(name, run, metrics, headline))
        previews[name] = preview(run, metrics)
    ranking = _ranking(rows, headline)
    result = {"budget_seconds": budget, "data": configs[0][1].data.model_dump(mode="json"),
              "modality": rows[0]["modality"], "headline": [asdict(f) for f in headline], "entries": rows,
              "ranking": ranking, "verdict": _verdict(rows, ranking, headline)}
    write_json(out / "bakeoff.json", result)
    from genlab.evaluation.report import write_bakeoff_report

    write_bakeoff_report(out / "bakeoff.html", result, headline, previews)
    return result


def entry_configs(entries: list[str | Path], overrides: list[str] | tuple = ()) -> list[tuple[str, RunConfig]]:
    """(name, config) per entry, each on the first entry's data and with its eval count and seed."""
    if len(entries) < 2:  # one entry has nothing to be compared with
        raise GenlabError("bakeoff: name at least two entries (run configs or family names)")
    families = set(family_names())
    configs: list[tuple[str, RunConfig]] = []
    base: RunConfig | None = None
    for entry in entries:
        if str(entry) in families:
            start = base if base is not None else load_config(None, overrides)
            raw = start.model_dump(mode="json")
            raw["model"], raw["name"] = {"family": str(entry)}, str(entry)
            raw["eval"].pop("sampling", None)  # sampling options are the family's own
            cfg = load_config(raw)
        elif Path(entry).is_file():
            cfg = load_config(entry, overrides)
        else:
            raise GenlabError(f"bakeoff: {entry} is neither a config file nor a family ({', '.join(sorted(families))})")
        if base is None:
            base = cfg
        else:
            cfg = cfg.model_copy(update={"data": base.data, "eval": cfg.eval.model_copy(
                update={"num_samples": base.eval.num_samples, "seed": base.eval.seed})})
        configs.append((cfg.name, cfg))
    names = [n for n, _ in configs]
    if len(set(names)) != len(names):
        raise GenlabError(f"bakeoff: two entries share a name ({', '.join(names)}); give each config its own `name`")
    return configs


def _done_or_resumed(folder: Path) -> Run | None:
    """An entry's run if it finished (reused) or has a checkpoint (resumed); None if it must be trained."""
    from genlab.api import fit

    paths = RunPaths(folder)
    if paths.summary.is_file():
        log.info(f"bakeoff: {folder.name} trained already ({paths.root})")
        return Run(paths.root)
    if paths.last_checkpoint.exists():  # a file, or a sharded folder
        log.info(f"bakeoff: resuming {folder.name} from {paths.last_checkpoint}")
        return fit(resume=paths.root)
    shutil.rmtree(paths.root, ignore_errors=True)  # killed before its first checkpoint: nothing to keep
    return None


def _steps_for(name: str, cfg: RunConfig, budget: float, folder: Path) -> int:
    """Steps that fill the budget: seconds per step from a short fit of the entry (startup not counted)."""
    from genlab.api import fit

    shutil.rmtree(folder / name, ignore_errors=True)
    quick = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "max_steps": CALIBRATION_STEPS, "max_time": None, "val_every": 10**9, "checkpoint_every": 10**9,
        "grid_size": 0, "progress": "none",
        "early_stopping": cfg.train.early_stopping.model_copy(update={"enabled": False})})})
    summary = fit(quick, out=folder / name).summary
    shutil.rmtree(folder / name, ignore_errors=True)
    rate = summary.get("samples_per_s")
    if not rate:
        raise GenlabError(f"bakeoff: {name}'s calibration timed too few steps ({summary.get('throughput')})")
    return max(1, int(budget * rate / cfg.train.batch_size))


def budgeted(cfg: RunConfig, steps: int, budget: float) -> RunConfig:
    """The entry's config with its steps, validation, checkpoints and warm-up scaled to the budget."""
    train = cfg.train
    every = max(1, steps // 4)
    schedule = train.schedule.model_copy(update={"warmup_steps": min(train.schedule.warmup_steps, steps // 10)})
    return cfg.model_copy(update={"train": train.model_copy(update={
        "max_steps": steps, "max_time": 1.5 * budget + 30,  # a cap if this machine slows down, not the budget
        "val_every": every, "checkpoint_every": every, "schedule": schedule})})


def _evaluated(run: Run, out: Path, first: str) -> dict[str, Any]:
    """The run's metrics, scored with the first entry's feature extractor (the same data, so the same net)."""
    from genlab.api import evaluate

    if run.paths.metrics.is_file():
        return read_json(run.paths.metrics)
    shared = RunPaths(out / first).eval_cache
    if shared.is_dir() and shared != run.paths.eval_cache:
        shutil.copytree(shared, run.paths.eval_cache, dirs_exist_ok=True)  # reused only if its key matches
    return evaluate(run)


def _row(name: str, run: Run, metrics: dict[str, Any], headline: tuple[Figure, ...]) -> dict[str, Any]:
    summary, modality = run.summary, run.model.spec.modality
    return {"name": name, "family": run.config.model.family, "run": str(run.path), "modality": modality,
            "parameters": summary.get("parameters"), "steps": summary.get("steps"),
            "train_seconds": summary.get("train_seconds"), "samples_per_s": summary.get("samples_per_s"),
            "seconds_per_sample": metrics.get("seconds_per_sample"),
            "metrics": {f.key: f.value(metrics) for f in headline},
            "intervals": {f.key: metrics[f"{f.key}_interval"] for f in headline if f"{f.key}_interval" in metrics}}


def preview(run: Run, metrics: dict[str, Any], n: int = 16) -> str:
    """What the report shows of an entry, as HTML: the outputs of the examples its evaluation wrote (continuations
    of held-out prompts, predictions), or else `n` samples (seed 0, the run's own sampling options), a model drawn
    from text drawing its example prompts."""
    from genlab.media.formats import TEXTS

    if metrics.get("examples"):
        return TEXTS.html([e["output"] for e in metrics["examples"][:3]])
    return run.model.media.html(run.sample(n, seed=0, **run.model.example_conditions(n)))


def _verdict(rows: list[dict[str, Any]], ranking: list[str], headline: tuple[Figure, ...]) -> str:
    """Whether the first two are told apart: their intervals on the ranking metric must not overlap."""
    if len(ranking) < 2 or not headline:
        return ""
    key, label = headline[0].key, headline[0].label
    first, second = (next(r for r in rows if r["name"] == name) for name in ranking[:2])
    a, b = first["intervals"].get(key), second["intervals"].get(key)
    if a is None or b is None:
        return f"{ranking[0]} leads on {label} (no interval to say by how much)"
    if a[1] < b[0] or b[1] < a[0]:
        return f"{ranking[0]} is ahead of {ranking[1]} on {label} beyond their 90% intervals"
    return (f"{ranking[0]} and {ranking[1]} are within each other's 90% intervals on {label}: "
            f"more eval.num_samples (or a longer budget) would be needed to tell them apart")


def _ranking(rows: list[dict[str, Any]], headline: tuple[Figure, ...]) -> list[str]:
    """Entry names, best first, by the first headline figure."""
    if not headline:
        return [r["name"] for r in rows]
    key, higher = headline[0].key, headline[0].higher_is_better
    scored = [r for r in rows if r["metrics"].get(key) is not None]
    return [r["name"] for r in sorted(scored, key=lambda r: r["metrics"][key], reverse=higher)]
