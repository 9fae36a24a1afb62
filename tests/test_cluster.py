"""The road to a cluster, as far as two CPU processes go: FSDP's sharded checkpoints, their resume and the
consolidated model folder; a torchrun launch; SLURM's preemption signal and the resume that follows it."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import genlab
from genlab import GenlabError

LM = ["model.family=transformer", "data.source=tinyshakespeare", "data.limit=20000", "model.context=32",
      "model.width=32", "model.layers=2", "model.heads=2", "train.batch_size=8", "train.optimizer.name=sgd",
      "train.optimizer.lr=0.3", "train.precision=32-true", "train.val_batches=2", "train.schedule.name=constant",
      "train.schedule.warmup_steps=0", "train.ema.enabled=false", "train.val_every=4", "train.checkpoint_every=2",
      "train.grid_size=2", "train.progress=none", "train.accelerator=cpu", "train.devices=2"]


CONFIG = "configs/shakespeare-char.yaml"


def genlab_cli(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m"), env=None, **kw):
    return subprocess.run([*launcher, "genlab", *args], capture_output=True, text=True, timeout=300, env=env, **kw)


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_fsdp_shards_checkpoints_resumes_under_torchrun_and_exports_what_one_process_trains(tmp_path):
    sharded, plain = tmp_path / "fsdp", tmp_path / "one"
    first = genlab_cli("fit", CONFIG, *sets(*LM, "train.strategy=fsdp", "train.max_steps=4"), "--out", str(sharded))
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sharded / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert sorted(p.name for p in shards.parent.iterdir()) == ["best.ckpt", "last.ckpt"], "no half-written folder"
    assert first.stdout.count("run directory:") == 1, "Lightning relaunched rank 1 into rank zero's run directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdp"], "no second run directory from rank 1"
    torchrun = (os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2", "-m")
    resumed = genlab_cli("fit", "--resume", str(sharded), *sets("train.max_steps=8"), launcher=torchrun)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("run directory:") == 1, "under torchrun too, rank zero alone reports"
    assert "DTensor" not in resumed.stderr and "_get_pg_default_device" not in resumed.stderr, "torch's FSDP noise"
    # two ranks of 8 take the two halves of one process's batch of 16 (SeededBatches): the same gradients
    genlab.fit(CONFIG, overrides=[*LM, "train.devices=1", "train.batch_size=16", "train.max_steps=8"], out=plain)

    run = genlab.load(sharded)
    assert run.summary["steps"] == 8 and run.summary["parameters"] == genlab.load(plain).summary["parameters"]
    exported, reference = (load_file(r / "model" / "model.safetensors") for r in (sharded, plain))
    assert exported.keys() == reference.keys()
    # FSDP's reduce-scatter averages the ranks' mean gradients, the mean over both halves: SGD, which does not
    # magnify float error as Adam does for tiny gradients, lands on one process's weights to float precision
    for name, weight in exported.items():
        torch.testing.assert_close(weight, reference[name], atol=1e-5, rtol=1e-4, msg=name)
    from transformers import AutoModelForCausalLM

    from genlab.training.checkpoints import whole_checkpoint

    lm = AutoModelForCausalLM.from_pretrained(sharded / "model")
    gathered = whole_checkpoint(shards)["state_dict"]
    for name, weight in lm.state_dict().items():
        assert torch.equal(weight, gathered[f"lm.{name}"]), f"the folder holds the last checkpoint's {name}"
    assert (sharded / "samples" / "final.txt").read_text().strip(), "the preview is drawn from the folder"


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """A small Llama and its character tokenizer in a transformers folder, built here (nothing downloaded)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from genlab.data.tokenize import train_tokenizer

    folder = tmp_path_factory.mktemp("pretrained")
    tokenizer = train_tokenizer("char", ["To be, or not to be, that is the question."], 64)
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SMALL_LM = [o for o in LM if o.startswith(("model.", "data."))]
TRAIN = [o for o in LM if o.startswith("train.")]


@pytest.mark.parametrize("overrides, named", [
    (["model.family=diffusion", "data.source=digits", "data.image_size=8", "model.block_out_channels=[16,32]"],
     "train.strategy"),
    ([*SMALL_LM, "train.ema.enabled=true"], "train.ema.enabled"),
    ([*SMALL_LM, "model.lora.r=4", "model.init_from={pretrained}"], "model.lora"),
    ([*SMALL_LM, "train.optimizer.name=muon"], "train.optimizer.name"),
], ids=["image family", "ema", "lora", "muon"])
def test_what_fsdp_cannot_shard_is_refused_before_any_process_starts(tmp_path, tiny_pretrained, overrides, named):
    overrides = [o.format(pretrained=tiny_pretrained) for o in overrides]
    with pytest.raises(GenlabError, match=named.replace(".", r"\.")):
        genlab.fit(None, overrides=[*TRAIN, "train.strategy=fsdp", "train.max_steps=2", *overrides],
                   out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_slurm_preemption_saves_requeues_and_the_resume_continues_from_that_checkpoint(tmp_path, caplog):
    """Lightning's SLURM environment answers the warning signal (SIGUSR1) with a checkpoint and `scontrol requeue`;
    the requeued job's `genlab fit --resume` continues from that checkpoint, not from an older last.ckpt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "genlab-lm", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    run_dir = tmp_path / "run"
    over = [o for o in LM if not o.startswith("train.devices")]
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen([sys.executable, "-m", "genlab", "fit", CONFIG, "--out", str(run_dir),
                            *sets(*over, "train.devices=1", "train.max_steps=5000", "train.checkpoint_every=1000")],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not list(run_dir.glob("tb/events*")):
            assert job.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.5)
        time.sleep(2)
        job.send_signal(signal.SIGUSR1)  # SLURM's warning before it preempts the job
        while not (tmp_path / "requeued").exists():
            assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        job.kill()  # the preemption itself
        job.wait()
        log.close()
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
    saved = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert len(saved) == 1 and not (run_dir / "checkpoints" / "last.ckpt").exists()
    step = torch.load(saved[0], weights_only=True)["global_step"]
    logger = logging.getLogger("genlab")  # its own handler: the command line may have stopped it propagating
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="genlab"):
            run = genlab.fit(resume=run_dir, overrides=[f"train.max_steps={step + 4}"])
    finally:
        logger.removeHandler(caplog.handler)
    assert f"resuming from {saved[0].name} at step {step}" in caplog.text
    assert run.summary["steps"] == step + 4
