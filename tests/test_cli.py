"""The CLI as a user runs it: in a subprocess, with real files."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from genlab.config import load_config

from .conftest import TINY


def genlab(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


VERBS = ["fit", "sample", "evaluate", "compare", "bakeoff", "advise", "plan", "sweep", "audit", "card", "filter",
         "rate", "ratings", "info", "prepare", "serve", "export",
         # declared by the families
         "impute", "score", "upscale", "translate", "reconstruct", "interpolate", "traverse"]


def test_the_verb_list_is_the_clis():
    from genlab.cli import app

    assert sorted(VERBS) == sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_the_command_lists_every_verb():
    text = genlab("--help").stdout
    assert "Usage: genlab" in text and all(re.search(rf"^(│ |  ){verb}\s", text, re.M) for verb in VERBS), text


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    from typer.testing import CliRunner

    from genlab.cli import app

    # in this process: a real process costs 0.7 s a verb, and the one above shows the command's own entry point
    text = CliRunner().invoke(app, [verb, "--help"], prog_name="genlab").stdout
    assert f"Usage: genlab {verb}" in text and "--help" in text


def test_fit_sample_info_evaluate_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    fit = genlab("fit", "configs/digits-diffusion.yaml", *sets, "--set", "train.max_steps=12", "--out", run)
    assert f"run directory: {run}" in fit.stdout

    grid = tmp_path / "grid.png"
    genlab("sample", run, "--n", 6, "--sampler", "ddim", "--steps", 5, "--seed", 3, "--out", grid)
    with Image.open(grid) as im:
        assert im.size[0] > 8 * 2

    ev = genlab("evaluate", run, "--n", 32, "--steps", 5)
    assert "FID: " in ev.stdout and "(real vs real: " in ev.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_generated"] == 32 and metrics["sampling"]["sampler"] == "dpm-solver"
    assert metrics["sampling"]["steps"] == 5
    assert "FeatureNet" in metrics["feature_extractor"]
    info = json.loads(genlab("info", run, "--json").stdout)  # once, after evaluate (each process costs the imports)
    assert info["family"] == "diffusion" and info["training"]["steps"] == 12 and info["model_exported"]
    assert info["metrics"]["fid"] == metrics["fid"]
    recipe = load_config("configs/digits-diffusion.yaml", TINY).eval.sampling
    assert info["sampling"] == recipe and recipe["steps"] == 10, "the options the model folder keeps"

    report = (run / "report.html").read_text()
    # three pictures: generated, held-out real, and the samples nearest a training image
    assert f"{metrics['fid']:.4g}" in report and report.count("data:image/png;base64,") == 3
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


@pytest.mark.parametrize("args, message", [
    (["evaluate", "no/such/run"], "no/such/run: no such run directory"),
    (["audit", "no/such/run"], "no/such/run: no such run directory"),
    (["impute", "no/such/run", "x.csv", "--out", "y.csv"], "no/such/run: no such run directory"),
    (["score", "no/such/run", "x.csv", "--out", "y.csv"], "no/such/run: no such run directory"),
    (["upscale", "no/such/run", "x.png"], "no/such/run: no such run directory"),
    (["rate", "no/such/run"], "rate: name at least two runs to compare"),
    (["ratings", "."], ".: holds no ratings.sqlite"),
    (["prepare", "missing.yaml"], "config file not found: missing.yaml"),
    (["serve", "no/such/run"], "no/such/run: neither a run directory nor a genlab model folder"),
    (["export", ".", "--to", "zip", "--out", "x"], "--to: 'zip' is not one of docker, onnx"),
    (["bakeoff", "configs/digits-gan.yaml"], "bakeoff: name at least two entries"),
])
def test_every_other_verb_answers_a_mistake_in_one_line(args, message):
    """In-process (the subprocess path is the one above): the verb's own check, its exit status, no traceback."""
    from typer.testing import CliRunner

    from genlab.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_sampling_options_are_checked_before_torch_is_imported(tiny_run):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "genlab", "sample", str(tiny_run.path),
                           "--sampler", "euler"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sampling.sampler: input should be 'ddpm', 'ddim' or 'dpm-solver' (got 'euler')" in proc.stderr
    assert not re.search(r"\|\s+torch$", proc.stderr, re.M), "a mistyped value waits seconds for torch's imports"


@pytest.mark.parametrize("args, message", [
    (["impute", "{run}", "rows.csv", "--out", "x.csv"], "a diffusion run; impute needs a tabular_vae run"),
    (["score", "{run}", "rows.csv", "--out", "x.csv"], "a diffusion run; score needs a tabular_vae run"),
    (["upscale", "{run}", "x.png"], "a diffusion run; upscale needs a sr_gan run"),
    (["interpolate", "{run}"], "a diffusion run; interpolate needs a vae run"),
    (["translate", "{run}", "x.jsonl"], "a diffusion run; translate needs a seq2seq run"),
])
def test_a_verb_the_runs_family_does_not_declare_names_the_families_that_do(tiny_run, args, message):
    from typer.testing import CliRunner

    from genlab.cli import app

    result = CliRunner().invoke(app, [a.format(run=tiny_run.path) for a in args])
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
