"""genlab sweep: a search space read and checked, trials as run directories, a killed sweep that resumes without
rerunning what finished, parallel workers on one journal, pruning, DDP, and the status report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from genlab.cli import app
from genlab.errors import GenlabError
from genlab.study.sweep import read_space, study_of, sweep

TINY = {"data": {"image_size": 8}, "model": {"family": "diffusion", "block_out_channels": [8, 16]},
        "train": {"batch_size": 16, "max_steps": 20, "val_every": 5, "checkpoint_every": 10, "log_every": 5,
                  "grid_size": 0, "progress": "none"},
        "eval": {"num_samples": 32, "feature_steps": 50, "sampling": {"steps": 5}}}
SPACE = {"train.optimizer.lr": {"log_uniform": [1.0e-4, 3.0e-2]}, "train.optimizer.name": {"choice": ["adamw", "sgd"]}}


@pytest.fixture
def files(tmp_path):
    config, space = tmp_path / "tiny.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump(TINY))
    space.write_text(yaml.safe_dump(SPACE))
    return config, space


def finished(out) -> list:
    from optuna.trial import TrialState

    return [t for t in study_of(out).get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_a_space_is_checked_before_anything_trains(files, tmp_path):
    config, _ = files
    bad = tmp_path / "bad.yaml"
    for text, says in (("train.optimizer.lr: {gaussian: [0, 1]}", "give one of log_uniform"),
                       ("train.optimizer.lr: {log_uniform: [0, 0.1]}", "low > 0"),
                       ("train.batch_size: {int: [64, 16]}", "low < high"),
                       ("train.optimiser.lr: {uniform: [0.1, 0.2]}", "train.optimiser"),
                       ("train.batch_size: {int: [0, 16]}", "train.batch_size"),
                       ("[1, 2]", "holds no keys")):
        bad.write_text(text)
        with pytest.raises(GenlabError, match=says):
            sweep(config, space=bad, trials=2, out=tmp_path / "never")
    assert read_space(files[1])["train.optimizer.name"] == ("choice", ["adamw", "sgd"], False)
    with pytest.raises(GenlabError, match="not a headline figure of the diffusion family .*fid"):
        sweep(config, space=files[1], trials=2, out=tmp_path / "never", objective="ssim")
    assert not (tmp_path / "never").exists()


def test_a_killed_sweep_resumes_without_rerunning_what_finished(files, tmp_path):
    config, space = files
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "genlab", "sweep", str(config), "--space", str(space), "--trials", "4",
            "--out", str(out), "--pruner", "none"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "study.journal").is_file() and len(finished(out)) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # midway through the third trial, or between trials
    proc.wait()
    before = {t.number: (out / "trials" / f"{t.number:03d}" / "train.json").stat().st_mtime for t in finished(out)}
    assert len(before) >= 2
    result = sweep(config, space=space, trials=4, out=out, pruner="none")
    after = finished(out)
    baseline = study_of(out).get_trials()[0]  # the config as written is the first trial
    assert baseline.params == {"train.optimizer.lr": 1e-3, "train.optimizer.name": '"adamw"'}
    assert len(after) == 4 and result["counts"]["complete"] == 4
    for number, mtime in before.items():  # what finished was not trained again
        assert (out / "trials" / f"{number:03d}" / "train.json").stat().st_mtime == mtime
    failed = [t for t in study_of(out).get_trials() if t.state.name == "FAIL"]
    for t in failed:  # the trial the kill cut short is tried again with the parameters it had drawn (a kill
        # between two of its suggestions leaves some; the retry draws the rest)
        assert any(t.params.items() <= done.params.items() for done in after)
        assert not (out / "trials" / f"{t.number:03d}").exists()
    best = result["best"][0]
    assert best["value"] == min(t.value for t in after) and (out / "sweep.html").read_text().count("<svg") == 2
    shown = CliRunner().invoke(app, ["sweep", str(out), "--status"])
    assert shown.exit_code == 0 and f"trial {best['number']:>3}" in shown.output, shown.output
    again = CliRunner().invoke(app, ["sweep", str(config), "--space", str(space), "--trials", "4", "--out",
                                     str(out), "--objective", "fid"])
    assert again.exit_code == 1 and "another config, space or objective" in again.output


def test_parallel_workers_share_one_study_and_the_pruner_stops_trials_worse_than_the_median(files, tmp_path):
    import optuna

    config, space = files
    out = tmp_path / "jobs"
    # two finished trials whose loss was far lower at every validation: from the first validation past the
    # warm-up (step 5 of 20), every trial this tiny model trains is worse than their median, so the median
    # pruner must stop each one there
    out.mkdir()
    study = study_of(out, {"config": TINY, "direction": "minimize", "pruner": "median", "seed": 0})
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=1e-6, intermediate_values={s: 1e-6 for s in (5, 10, 15, 20)}))
    result = sweep(config, space=space, trials=5, out=out, jobs=2)
    trials = [t for t in finished(out) if "run" in t.user_attrs]
    assert len(trials) == 3 and result["counts"]["pruned"] == 3 and result["counts"]["fail"] == 0
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both workers took trials"
    for t in trials:
        assert list(t.intermediate_values) == [5], "pruned at the first validation past the warm-up"
        assert json.loads((out / "trials" / f"{t.number:03d}" / "train.json").read_text())["steps"] == 5


def test_a_ddp_trial_runs_on_every_rank_and_rank_zero_alone_reports(files, tmp_path):
    config, space = files
    ddp = {**TINY, "train": {**TINY["train"], "strategy": "ddp", "devices": 2, "accelerator": "cpu", "max_steps": 10}}
    config.write_text(yaml.safe_dump(ddp))
    proc = subprocess.run([sys.executable, "-m", "genlab", "sweep", str(config), "--space", str(space), "--trials",
                           "2", "--out", str(tmp_path / "ddp"), "--pruner", "none"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = finished(tmp_path / "ddp")
    assert len(trials) == 2 and len(study_of(tmp_path / "ddp").get_trials()) == 2, "rank 1 asked for no trial"
    assert all(len(t.intermediate_values) == 2 for t in trials), "one report per validation, from rank zero"
    summary = json.loads((tmp_path / "ddp" / "trials" / "001" / "train.json").read_text())
    assert summary["steps"] == 10


def test_a_trial_whose_worker_died_before_naming_itself_is_closed_and_a_live_ones_is_kept(tmp_path):
    import platform

    from optuna.trial import TrialState

    from genlab.study.sweep import _retry_dead

    settings = {"config": {"train": {"max_steps": 20}}, "direction": "minimize", "pruner": "none", "seed": 0}
    study = study_of(tmp_path, settings)
    orphan = study.ask()  # a kill between `ask` and the worker's name: no pid, no host
    live = study.ask()
    live.set_user_attr("pid", os.getpid())
    live.set_user_attr("host", platform.node())
    halfway = study.ask()  # a kill between two suggestions: one parameter drawn, the other not yet
    halfway.suggest_float("train.optimizer.lr", 1e-4, 1e-2, log=True)
    _retry_dead(study, tmp_path)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] == TrialState.FAIL, "else it counts as running forever and the sweep ends short"
    assert states[live.number] == TrialState.RUNNING and states[halfway.number] == TrialState.FAIL
    retried = study.ask()  # what was drawn is drawn again; the rest is new
    assert retried.suggest_float("train.optimizer.lr", 1e-4, 1e-2, log=True) == halfway.params["train.optimizer.lr"]
