"""The CLI as a user runs it: in a subprocess, with real files."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from .conftest import TINY


def genlab(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("verb", ["fit", "sample", "evaluate", "info"])
def test_every_verb_has_help(verb):
    assert "Usage" in genlab(verb, "--help").stdout


def test_fit_sample_info_evaluate_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    fit = genlab("fit", "configs/digits-diffusion.yaml", *sets, "--set", "train.max_steps=12", "--out", run)
    assert f"run directory: {run}" in fit.stdout

    grid = tmp_path / "grid.png"
    genlab("sample", run, "--n", 6, "--sampler", "ddim", "--steps", 5, "--seed", 3, "--out", grid)
    with Image.open(grid) as im:
        assert im.size[0] > 8 * 2

    info = json.loads(genlab("info", run, "--json").stdout)
    assert info["family"] == "diffusion" and info["training"]["steps"] == 12 and info["model_exported"]

    ev = genlab("evaluate", run, "--n", 32, "--steps", 5)
    assert "fid:" in ev.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_generated"] == 32 and metrics["sampling"]["sampler"] == "dpm-solver"
    assert metrics["sampling"]["steps"] == 5
    assert "FeatureNet" in metrics["feature_extractor"]
    assert json.loads(genlab("info", run, "--json").stdout)["metrics"]["fid"] == metrics["fid"]

    report = (run / "report.html").read_text()
    assert f"{metrics['fid']:.4g}" in report and report.count("data:image/png;base64,") == 2
    assert "<polyline" in report, "the loss curve is drawn from the run's TensorBoard events"
    assert not re.search(r"(src|href)=['\"]?https?:", report), "the report is self-contained"


@pytest.mark.parametrize("args, message", [
    (["sample", "no/such/run"], "no/such/run: no such run directory"),
    (["info", "."], "missing config.yaml; run `genlab fit CONFIG` first"),
    (["fit"], "give a CONFIG file, or --resume RUN_DIR"),
    (["fit", "--resume", "no/such/run"], "no such run directory"),
])
def test_user_mistakes_get_one_clear_line(args, message):
    proc = genlab(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr.replace("\n", " ") or message in proc.stdout
    assert "Traceback" not in proc.stderr


def test_sampling_options_are_checked(tiny_run):
    proc = genlab("sample", tiny_run.path, "--sampler", "euler", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sampling.sampler: input should be 'ddpm', 'ddim' or 'dpm-solver' (got 'euler')" in proc.stderr
