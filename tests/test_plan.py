"""genlab plan: parameters counted as the model has them, memory parts that add up, a GPU plan that says whether
it fits, and a CPU plan within 25% of the peak memory a real run reaches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.errors import GenlabError
from genlab.study.plan import plan

from .conftest import tiny

RUN = ("import json, sys; import genlab; from genlab.study.plan import peak_rss\n"
       "genlab.fit(sys.argv[1], overrides=json.loads(sys.argv[2]), out=sys.argv[3])\n"
       "print(peak_rss())")


def test_a_cpu_plan_is_within_a_quarter_of_the_runs_peak_memory(tmp_path):
    over = ["train.max_steps=5", "train.batch_size=256", "train.max_time=null", "train.progress=none"]
    p = plan("configs/digits-vae.yaml", overrides=over)
    assert p["parameters"] > 100_000 and p["memory"]["activations"] > 0 and p["device_memory"] is None
    assert p["memory_total"] == sum(p["memory"].values()) and p["run_seconds"] == 5 * p["step_seconds"]
    out = subprocess.run([sys.executable, "-c", RUN, "configs/digits-vae.yaml", json.dumps(over),
                          str(tmp_path / "run")], capture_output=True, text=True, check=True)
    measured = int(out.stdout.split()[-1])
    print(f"plan {p['memory_total'] / 1e6:.0f} MB, run {measured / 1e6:.0f} MB")
    assert abs(p["memory_total"] / measured - 1) < 0.25


def test_a_gpu_plan_says_whether_it_fits_and_bad_devices_are_named():
    p = plan(None, overrides=tiny(), gpu="h100", devices=8)
    assert p["fits"] is True and p["device_memory"] == 80e9 and "process" not in p["memory"]
    assert p["peak_flops"] == 67e12, "a float32 run is planned at the float32 peak"
    with pytest.raises(GenlabError, match="--gpu: 'tpu'"):
        plan(None, overrides=tiny(), gpu="tpu")
    shown = CliRunner().invoke(app, ["plan", "configs/digits-vae.yaml", "--gpu", "l4", "--set", "train.max_steps=3"])
    assert shown.exit_code == 0 and "parameters" in shown.output and "(fits in 24 GB)" in shown.output, shown.output
    assert "checked on" in shown.output
