"""The training core: exact resume, the NaN guard, EMA, checkpoints, stopping rules, logs."""

import logging
import math
import signal

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import genlab
from genlab.config import TrainConfig
from genlab.training import trainer
from genlab.training.callbacks import NonFiniteLoss, TrainingInterrupted
from genlab.training.trainer import cpu_has_bf16, precision_here

from .conftest import Crash, Poison, tiny, weights


def test_resume_after_a_crash_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    whole = genlab.fit(None, overrides=tiny(), out=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=tiny(), out=tmp_path / "broken", callbacks=[Crash(20)])
    assert not (tmp_path / "broken" / "model").exists(), "a crashed run exports nothing"
    assert torch.load(tmp_path / "broken/checkpoints/last.ckpt", weights_only=True)["global_step"] == 20
    resumed = genlab.fit(resume=tmp_path / "broken")
    assert resumed.summary["steps"] == 30
    a, b = weights(whole.path), weights(resumed.path)
    assert all(torch.equal(a[k], b[k]) for k in a), "resume must be exact, bit for bit"


def test_resume_can_extend_a_finished_run(tiny_run, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_run.path, tmp_path / "copy")
    longer = genlab.fit(resume=copy, overrides=["train.max_steps=40"])
    assert longer.summary["steps"] == 40 and longer.config.train.max_steps == 40


def test_the_written_config_reproduces_the_loss_curve_and_tensorboard_reads_it(tiny_run, tmp_path):
    again = genlab.fit(tiny_run.paths.config, out=tmp_path / "again")
    curves = []
    for run in (tiny_run, again):
        acc = EventAccumulator(str(run.paths.tb), size_guidance={"images": 0, "scalars": 0}).Reload()
        tags = acc.Tags()
        assert {"train/loss", "val/loss", "train/grad_norm", "perf/samples_per_s", "perf/mfu"} <= set(tags["scalars"])
        assert any(t.startswith("lr-") for t in tags["scalars"])
        assert "samples" in tags["images"]
        curves.append([(e.step, e.value) for e in acc.Scalars("train/loss")])
    assert len(curves[0]) >= 5 and curves[0] == curves[1]
    assert all(math.isfinite(v) for _, v in curves[0])


class CtrlC(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 12:
            raise KeyboardInterrupt


def test_ctrl_c_says_how_to_resume_and_resume_finishes(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingInterrupted, match=f"interrupted at step 12.*genlab fit --resume {tmp_path}/r"):
            genlab.fit(None, overrides=tiny(), out=tmp_path / "r", callbacks=[CtrlC()])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    assert genlab.fit(resume=tmp_path / "r").summary["steps"] == 30


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"train loss is nan at step 15.*last.ckpt.*intact") as err:
        genlab.fit(None, overrides=tiny(), out=tmp_path / "r", callbacks=[Poison()])
    assert err.value.step == 15
    ckpt = torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10
    for state in (ckpt["state_dict"], ckpt["current_model_state"]):
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (tmp_path / "r/model").exists()


def test_exported_model_holds_the_ema_weights(tiny_run):
    ckpt = torch.load(tiny_run.paths.last_checkpoint, weights_only=True)
    exported = weights(tiny_run.path)
    ema = {k.removeprefix("unet."): v for k, v in ckpt["state_dict"].items()}
    raw = {k.removeprefix("unet."): v for k, v in ckpt["current_model_state"].items()}
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert any(not torch.equal(exported[k], raw[k]) for k in exported), "EMA weights differ from the raw ones"


def test_without_ema_the_raw_weights_are_exported(tmp_path):
    run = genlab.fit(None, overrides=tiny("train.ema.enabled=false", "train.max_steps=10"), out=tmp_path / "r")
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    assert "current_model_state" not in ckpt
    exported = weights(run.path)
    assert all(torch.equal(exported[k], ckpt["state_dict"]["unet." + k]) for k in exported)


def test_checkpoints_and_run_files(tiny_run):
    files = {p.relative_to(tiny_run.path).as_posix() for p in tiny_run.path.rglob("*") if p.is_file()}
    assert {"config.yaml", "train.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model/model_index.json",
            "model/genlab.json", "samples/final.png", "samples/step_000010.png"} <= files
    assert not any(f.endswith(".tmp") for f in files), "checkpoints are renamed into place"
    s = tiny_run.summary
    assert s["steps"] == 30 and s["stopped_because"] == "max_steps" and s["parameters"] > 10_000
    assert s["samples_per_s"] > 0 and 0 < s["mfu"] < 1 and s["gflops_per_batch"] > 0


def test_early_stopping_stops_before_max_steps(tmp_path):
    run = genlab.fit(None, overrides=tiny("train.max_steps=200", "train.early_stopping.enabled=true",
                                          "train.early_stopping.patience=1", "train.early_stopping.min_delta=10"),
                     out=tmp_path / "r")
    assert run.summary["stopped_because"] == "early_stopping" and run.summary["steps"] == 20
    assert torch.load(run.paths.last_checkpoint, weights_only=True)["global_step"] == 20


def test_max_time_is_a_wall_clock_budget_and_the_schedule_anneals_within_it(tmp_path):
    probe = Probe()
    run = genlab.fit(None, overrides=tiny("train.max_steps=100000", "train.max_time=4", "train.optimizer.lr=0.001",
                                          "train.schedule.name=cosine", "train.schedule.warmup_steps=0"),
                     out=tmp_path / "r", callbacks=[probe])
    assert run.summary["stopped_because"] == "max_time" and 0 < run.summary["steps"] < 100000
    lrs = probe.lrs  # a step schedule would still be at its peak here: under 1% of max_steps ran
    assert lrs[-1] < 0.2 * 0.001, "the cosine reached its floor (0.1 of the peak) when the time ran out"
    assert lrs[len(lrs) // 2] < 0.85 * 0.001 and lrs == sorted(lrs, reverse=True), "annealed by the clock"


class Probe(L.Callback):
    """Records what training actually did: the optimizer, lr and clipped gradient norm at each update,
    the dtype the network computed in, and how many validations ran."""

    def __init__(self) -> None:
        self.lrs, self.norms, self.dtypes, self.batches, self.validations = [], [], set(), 0, 0
        self.optimizer = None

    def on_fit_start(self, trainer, pl_module):
        conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, args, output: self.dtypes.add(output.dtype))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # runs after the core's clipping
        self.optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()
                                                                if p.grad is not None])))

    def on_validation_end(self, trainer, pl_module):
        self.validations += 1


def trained_with(tmp_path, *extra: str) -> tuple[genlab.Run, Probe]:
    probe = Probe()
    run = genlab.fit(None, overrides=tiny("train.max_steps=20", *extra), out=tmp_path / "r", callbacks=[probe])
    assert run.summary["steps"] == 20 and math.isfinite(run.summary["train_loss"])
    return run, probe


def test_bf16_mixed_computes_in_bfloat16_where_the_cpu_has_bf16_kernels_and_in_float32_with_a_warning_elsewhere(
        tmp_path, caplog):
    logger = logging.getLogger("genlab")
    logger.addHandler(caplog.handler)  # an earlier command-line test may have stopped genlab's records propagating
    try:
        with caplog.at_level(logging.WARNING, logger="genlab"):
            run, probe = trained_with(tmp_path, "train.precision=bf16-mixed")
    finally:
        logger.removeHandler(caplog.handler)
    assert run.config.train.precision == "bf16-mixed", "config.yaml keeps what was asked"
    if cpu_has_bf16():
        assert torch.bfloat16 in probe.dtypes and run.summary["trained_precision"] == "bf16-mixed"
    else:  # this machine: the run trained in float32, said so, and train.json records what it ran in
        assert probe.dtypes == {torch.float32} and run.summary["trained_precision"] == "32-true"
        assert "no bf16 matrix kernels" in caplog.text
    assert f"precision {run.summary['trained_precision']}," in genlab.card(run).read_text(), "the card says what ran"


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_is_kept_where_it_is_fast_and_on_accelerators(monkeypatch, precision):
    from lightning.pytorch.trainer.connectors import accelerator_connector

    for has, expected in ((True, precision), (False, "32-true")):
        monkeypatch.setattr(trainer, "cpu_has_bf16", lambda has=has: has)
        assert precision_here(TrainConfig(precision=precision, accelerator="cpu")).precision == expected
        for accelerator in ("gpu", "cuda", "mps", "tpu"):
            assert precision_here(TrainConfig(precision=precision, accelerator=accelerator)).precision == precision
        for auto, kept in (("cpu", expected), ("cuda", precision), ("mps", precision)):  # auto: Lightning's choice
            monkeypatch.setattr(accelerator_connector, "_select_auto_accelerator", lambda auto=auto: auto)
            assert precision_here(TrainConfig(precision=precision)).precision == kept
        assert precision_here(TrainConfig(precision="32-true", accelerator="cpu")).precision == "32-true"


def test_fp32_computes_in_float32(tmp_path):
    _, probe = trained_with(tmp_path)
    assert probe.dtypes == {torch.float32}


def test_accumulation_updates_every_second_batch_and_clipping_bounds_the_norm(tmp_path):
    _, probe = trained_with(tmp_path, "train.accumulate_grad_batches=2", "train.grad_clip=0.05")
    assert probe.batches == 40 and len(probe.lrs) == 20, "20 updates, each over two batches"
    assert max(probe.norms) <= 0.05 * 1.001


def test_sgd_with_a_step_schedule_halves_the_lr_every_five_steps(tmp_path):
    _, probe = trained_with(tmp_path, "train.optimizer.name=sgd", "train.optimizer.lr=0.01",
                            "train.schedule.name=step", "train.schedule.step_size=5", "train.schedule.warmup_steps=0")
    assert isinstance(probe.optimizer, torch.optim.SGD)
    assert probe.lrs[:6] == pytest.approx([0.01] * 5 + [0.005]) and probe.lrs[-1] == pytest.approx(0.01 / 8)


def test_plateau_lowers_the_lr_when_val_loss_stops_improving(tmp_path):
    # an lr too small to move the weights: the second validation cannot improve on the first
    _, probe = trained_with(tmp_path, "train.optimizer.name=adam", "train.optimizer.lr=1e-12",
                            "train.schedule.name=plateau", "train.schedule.patience=0", "train.schedule.warmup_steps=0")
    assert isinstance(probe.optimizer, torch.optim.Adam) and not isinstance(probe.optimizer, torch.optim.AdamW)
    assert probe.lrs[0] == pytest.approx(1e-12) and probe.lrs[-1] == pytest.approx(0.5e-12)


def test_no_validation_split_and_a_linear_warmup(tmp_path):
    _, probe = trained_with(tmp_path, "data.val_fraction=0", "train.schedule.name=constant",
                            "train.schedule.warmup_steps=5", "train.optimizer.lr=0.001")
    assert probe.validations == 0
    assert probe.lrs[0] < probe.lrs[3] < probe.lrs[5] == pytest.approx(0.001) == probe.lrs[-1]


def test_an_existing_run_is_not_overwritten(tiny_run):
    with pytest.raises(genlab.GenlabError, match="already holds a run; continue it with --resume"):
        genlab.fit(None, overrides=tiny(), out=tiny_run.path)


def test_mlflow_records_params_and_metrics_in_a_sqlite_store_beside_the_runs(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = genlab.fit(None, overrides=tiny("train.max_steps=10", "train.loggers=[tensorboard,mlflow]"),
                     out=tmp_path / "runs" / "tiny")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (recorded,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert recorded.info.run_name == "tiny" and recorded.info.status == "FINISHED"
    assert "train/loss" in recorded.data.metrics and recorded.data.params  # the losses and the hyperparameters
    assert (run.path / "tb").is_dir(), "TensorBoard still logs beside it"


def test_wandb_offline_writes_under_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = genlab.fit(None, overrides=tiny("train.max_steps=10", "train.loggers=[tensorboard,wandb]"),
                     out=tmp_path / "r")
    assert list((run.path / "wandb").glob("offline-run-*")), "an offline W&B run sits in the run directory"


def test_resume_after_kill_9_of_the_cli_matches_an_uninterrupted_run(tmp_path):
    """A real process death, at whatever moment after the first checkpoint; resume must still be exact."""
    import subprocess
    import sys
    import time

    sets = [a for s in tiny("train.max_steps=40") for a in ("--set", s)]
    demo = "configs/digits-diffusion.yaml"
    whole = genlab.fit(demo, overrides=tiny("train.max_steps=40"), out=tmp_path / "whole")
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "fit", demo, *sets, "--out", str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed/checkpoints/last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    step = torch.load(last, weights_only=True)["global_step"]  # never torn: written by rename
    assert 10 <= step <= 40
    resumed = genlab.fit(resume=tmp_path / "killed")
    a, b = weights(whole.path), weights(resumed.path)
    assert resumed.summary["steps"] == 40 and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_counts_optimizer_steps_and_logs_once_per_step(tmp_path):
    run = genlab.fit(None, overrides=tiny("train.max_steps=10", "train.accumulate_grad_batches=3"), out=tmp_path / "r")
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    assert ckpt["global_step"] == 10
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_done": 30}]
    acc = EventAccumulator(str(run.paths.tb)).Reload()
    steps = [e.step for e in acc.Scalars("perf/samples_per_s")]
    assert steps and len(steps) == len(set(steps)), "one throughput point per logged step"


class BarProbe(L.Callback):
    """Reads the progress bar's training task when the run ends."""

    def on_train_end(self, trainer, pl_module):
        from genlab.training.callbacks import ProgressBar

        bar = next(c for c in trainer.callbacks if isinstance(c, ProgressBar))
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen = (task.completed, task.total, trainer.current_epoch)


def test_the_progress_bar_counts_the_run_not_the_epoch(tmp_path):
    probe = BarProbe()
    genlab.fit(None, overrides=tiny("train.max_steps=12", "train.batch_size=128", "train.val_every=12",
                                    "train.progress=rich"), out=tmp_path / "r", callbacks=[probe])
    completed, total, epochs = probe.seen
    assert (completed, total) == (12, 12) and epochs >= 1, "12 steps of the run, across its epochs, on one bar"
