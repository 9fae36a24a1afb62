"""The life a user gives a run: re-running a finished fit, extending it, killing it before the
export, short runs, and error paths that must answer before the training stack has loaded."""

import logging
import shutil
import subprocess
import sys

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import genlab
from genlab.training.callbacks import GradientWatch, NonFiniteLoss

from .conftest import GAN_TINY, UNET, Crash, Poison, tiny


def snapshot(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resuming_a_complete_run_changes_nothing_and_says_how_to_go_on(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.path, tmp_path / "done")
    before = snapshot(run)
    from typer.testing import CliRunner

    from genlab.cli import app

    done = CliRunner().invoke(app, ["fit", "--resume", str(run)])
    assert done.exit_code == 0, done.output
    said = done.output.strip().splitlines()
    assert said == [f"run complete at step 30 of 30; nothing changed. Train further with: genlab fit --resume {run} "
                    "--set train.max_steps=60"]
    assert snapshot(run) == before, "no file is rewritten, touched or added"


def test_a_kill_between_the_last_checkpoint_and_the_export_is_finished_by_resume(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.path, tmp_path / "killed")
    shutil.rmtree(run / "model")
    (run / "train.json").unlink()
    resumed = genlab.fit(resume=run)
    a, b = load_file(tiny_run.path / UNET), load_file(run / UNET)
    assert all(torch.equal(a[k], b[k]) for k in a), "the EMA weights are exported, as the full run did"
    assert resumed.summary["steps"] == 30 and resumed.summary["train_seconds"] == tiny_run.summary["train_seconds"]


def test_extending_a_finished_run_equals_training_that_long_from_the_start(tmp_path, caplog):
    constant = tiny("train.schedule.name=constant")
    whole = genlab.fit(None, overrides=[*constant, "train.max_steps=30"], out=tmp_path / "whole")
    short = genlab.fit(None, overrides=[*constant, "train.max_steps=20"], out=tmp_path / "short")
    longer = genlab.fit(resume=short.path, overrides=["train.max_steps=30"])
    a, b = load_file(whole.path / UNET), load_file(longer.path / UNET)
    assert longer.summary["steps"] == 30 and all(torch.equal(a[k], b[k]) for k in a)
    assert "cosine" not in caplog.text

    cosine = genlab.fit(None, overrides=tiny("train.max_steps=20"), out=tmp_path / "cosine")
    with caplog.at_level(logging.WARNING, logger="genlab"):
        genlab.fit(resume=cosine.path, overrides=["train.max_steps=30"])
    assert "train.schedule cosine spans train.max_steps, which moves from 20 to 30" in caplog.text


def test_train_json_adds_up_every_fit_call_of_a_run(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=tiny(), out=tmp_path / "r", callbacks=[Crash(20)])
    clock = next(v for k, v in torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)["callbacks"].items()
                 if k.startswith("Throughput"))
    assert clock["batches"] >= 15 and clock["train_seconds"] > 0
    s = genlab.fit(resume=tmp_path / "r").summary
    assert s["seconds"] > clock["seconds"] and s["train_seconds"] > clock["train_seconds"]
    assert s["throughput"] == f"{clock['batches'] + 9} timed batches", "the first batch after resume is warm-up"


def test_throughput_is_never_above_the_peak_and_says_how_the_peak_was_measured(tmp_path, monkeypatch):
    monkeypatch.setattr("genlab.training.callbacks.matmul_peak", lambda dtype, device: 1e6)  # a peak read far too low
    s = genlab.fit(None, overrides=tiny("train.max_steps=10"), out=tmp_path / "r").summary
    assert s["mfu"] == 1.0 and s["samples_per_s"] > 0
    assert s["matmul_peak"]["dtype"] == "float32" and "at the start and at the end" in s["matmul_peak"]["how"]


class WholeBatchFlops(L.Callback):
    """The reference: FLOPs from before the first batch to its end, the optimizers' updates included (AdamW's are
    elementwise: no FLOPs). Entered before the run's counter and left after it, as modes must nest."""

    def on_train_epoch_start(self, trainer, pl_module):
        if not hasattr(self, "counter"):
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not hasattr(self, "flops"):
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()


@pytest.mark.parametrize("family", [[], GAN_TINY], ids=["diffusion", "gan (optimizers stepped by hand)"])
def test_the_flops_counted_are_the_models_forward_and_backward_not_the_optimizers(family, tmp_path):
    counted = {}
    for name in ("adamw", "muon"):
        reference = WholeBatchFlops()
        overrides = [*(family or tiny()), "train.max_steps=4", f"train.optimizer.name={name}"]
        counted[name] = genlab.fit(None, overrides=overrides, out=tmp_path / name,
                                   callbacks=[reference]).summary["gflops_per_batch"]
        if name == "adamw":
            assert counted[name] > 0 and counted[name] == reference.flops / 1e9, "the whole forward and backward"
    if not family:  # Muon's Newton-Schulz iterations are matmuls, which the update's count would add
        assert counted["adamw"] == counted["muon"], counted


def test_a_batch_that_fails_while_its_flops_are_counted_leaves_no_counter_behind(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=tiny(), out=tmp_path / "r", callbacks=[Crash(0)])
    assert torch._C._len_torch_dispatch_stack() == 0, "every later op in this process would go through it"


def test_a_process_measures_the_peak_in_a_bounded_number_of_trials_and_keeps_their_best(monkeypatch):
    from genlab.training import peak

    monkeypatch.setattr(peak, "_best", {})
    monkeypatch.setattr(peak, "_trials", {})
    monkeypatch.setattr(peak, "SECONDS_PER_TRIAL", 0.002)
    made, randn = [], torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: made.append(a) or randn(*a, **k))
    readings = [peak.matmul_peak() for _ in range(30)]
    readings_taken = 1 + peak.MAX_TRIALS - peak.TRIALS  # the first takes TRIALS, each later one a single trial
    assert len(made) == 2 * readings_taken, "after MAX_TRIALS a reading is the best so far, with no matmul"
    assert readings == sorted(readings) and len(set(readings[readings_taken - 1:])) == 1
    assert peak.matmul_peak(torch.bfloat16) > 0 and len(made) == 2 * (readings_taken + 1), "a dtype of its own"


def test_a_run_too_short_to_time_says_not_measured(tmp_path):
    from typer.testing import CliRunner

    from genlab.cli import app

    said = CliRunner().invoke(app, ["fit", "configs/digits-diffusion.yaml", *[a for o in tiny("train.max_steps=2")
                                                                            for a in ("--set", o)],
                                    "--out", str(tmp_path / "r")])
    assert said.exit_code == 0, said.output
    assert "throughput not measured: 1 timed batches (need 3)" in said.output
    s = genlab.load(tmp_path / "r").summary
    assert s["samples_per_s"] is None and s["mfu"] is None


class GradProbe(L.Callback):
    """Runs after the core's callbacks: sees the gradients the optimizer will apply."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


def test_clipping_bounds_the_applied_gradients_and_logs_the_norm_before_clipping(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    probe = GradProbe()
    run = genlab.fit(None, overrides=tiny("train.max_steps=10", "train.grad_clip=0.01", "train.log_every=1"),
                     out=tmp_path / "r", callbacks=[probe])
    assert len(probe.norms) == 10 and max(probe.norms) <= 0.01 * 1.001
    logged = [e.value for e in EventAccumulator(str(run.paths.tb)).Reload().Scalars("train/grad_norm")]
    assert min(logged) > 0.01, "the logged norm is the one before clipping"


def test_deferred_nan_checks_name_the_step_and_no_checkpoint_holds_it(tmp_path, monkeypatch):
    """What an accelerator does (check every few steps, not every step), forced on the CPU."""
    monkeypatch.setattr(GradientWatch, "on_fit_start", lambda self, trainer, module: setattr(self, "sync_every", 7))
    with pytest.raises(NonFiniteLoss, match=r"went non-finite at step 15") as err:
        genlab.fit(None, overrides=tiny(), out=tmp_path / "r", callbacks=[Poison()])
    assert err.value.step == 15
    ckpt = torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


LOADED = "import sys; from genlab.cli import main; {call}; " \
         "print(sorted(m for m in ('torch', 'lightning', 'diffusers', 'torchmetrics') if m in sys.modules))"


@pytest.mark.parametrize("args", [["info", "/no/such/dir"], ["sample", "/no/such/dir"], ["fit", "/no/such.yaml"]])
def test_error_paths_answer_before_the_training_stack_loads(args):
    code = LOADED.format(call=f"sys.argv = ['genlab', *{args!r}]\ntry: main()\nexcept SystemExit: pass")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", "nothing heavy was imported to say so"


def test_info_on_a_real_run_reads_files_without_the_training_stack(tiny_run):
    code = LOADED.format(call=f"sys.argv = ['genlab', 'info', {str(tiny_run.path)!r}]\ntry: main()\n"
                              "except SystemExit: pass")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "family: diffusion" in proc.stdout, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_skipped_images_are_one_clean_line_on_the_command_line(tmp_path):
    from .conftest import make_folder

    make_folder(tmp_path / "images", corrupt=True)
    proc = subprocess.run([sys.executable, "-m", "genlab", "fit", "configs/digits-diffusion.yaml",
                           *[a for o in tiny("train.max_steps=2", "data.source=image_folder",
                                             f"data.path={tmp_path / 'images'}") for a in ("--set", o)],
                           "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "warning: data: read 21; validate: not a readable image: 1, e.g. dogs/broken.png" in proc.stderr
    assert "UserWarning" not in proc.stderr and "sources.py" not in proc.stderr
    assert any("broken.png" in n for n in genlab.load(tmp_path / "r").summary["data"]["notes"])
