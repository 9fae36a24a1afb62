"""Every shipped config runs as a user runs it: from a folder that is not the repository, for a few steps,
then the family's own use (sample, upscale, impute) and evaluate. A config that reads a file outside the
package fails here."""

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import genlab
from genlab.capabilities import headline
from genlab.cli import app
from genlab.media.formats import TEXTS

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
FEW = ["train.max_steps=3", "train.max_time=null", "train.val_every=3", "train.checkpoint_every=3",
       "train.val_batches=2", "train.schedule.warmup_steps=1", "train.progress=none", "train.grid_size=2",
       "data.limit=1000",  # generated sets (shapes, docstrings) make only what a few steps need
       "eval.num_samples=16", "eval.feature_steps=20", "eval.latent_images=64", "eval.likelihood_samples=2"]


def few_steps(config: Path) -> list[str]:
    """FEW, and short generations: few new tokens of text, few sampler steps of diffusion, few class images of
    DreamBooth's prior (the config's are for real runs)."""
    loaded = genlab.load_config(config)
    sampling = loaded.eval.sampling
    return FEW + (["eval.sampling.max_new_tokens=8"] if "max_new_tokens" in sampling else []) + (
        ["eval.sampling.steps=4"] if "steps" in sampling else []) + (
        ["model.dreambooth.num_class_images=8"] if getattr(loaded.model, "dreambooth", None) else [])


def use(run: genlab.Run, folder: Path) -> None:
    """What a user does first with a trained run of this family, through the public API."""
    family = run.config.model.family
    if family == "sr_gan":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / "in.png")
        written, failed = genlab.upscale_files(run, folder / "in.png", folder / "out.png")
        with Image.open(written[0]) as im:
            assert not failed and im.size == (24 * run.config.model.scale, 20 * run.config.model.scale)
    elif family == "tabular_vae":
        rows = run.sample(5, seed=0)
        holes = rows.copy()
        holes.iloc[0, 0] = None
        holes.to_csv(folder / "holes.csv", index=False)
        filled = pd.read_csv(genlab.impute_file(run, folder / "holes.csv", folder / "filled.csv"))
        assert len(filled) == 5 and filled.iloc[:, 0].notna().all()
    elif family == "seq2seq":
        assert len(run.sample(2, seed=0, source=["a source", "another"])) == 2
    elif run.model.media.name == "audio":
        waves = run.sample(2, seed=0, labels="seven", steps=4, griffin_lim_iters=4)
        assert waves.shape == (2, run.model.spec.shape[-1]) and waves.abs().max() <= 1
    elif run.model.media is TEXTS:
        assert all(isinstance(t, str) for t in run.sample(2, seed=0, prompt="The"))
    else:
        images = run.sample(4, seed=0)
        assert images.shape[0] == 4 and images.min() >= 0 and images.max() <= 1


_stages: dict[Path, Path] = {}
TRAIN_FIRST = re.compile(r"genlab fit configs/(\S+\.yaml) --out (\S+)")  # a recipe's header: what to train first


def _stage_run(recipe: Path, tmp_path_factory) -> Path:
    """A recipe's run, trained a few steps once for the recipes that start from it (and its own first stages)."""
    if recipe not in _stages:
        out = tmp_path_factory.mktemp("stage") / "run"
        with _first_stages_of(recipe, tmp_path_factory, out.parent):
            _stages[recipe] = genlab.fit(recipe, overrides=few_steps(recipe), out=out).path
    return _stages[recipe]


@contextlib.contextmanager
def _first_stages_of(recipe: Path, tmp_path_factory, folder: Path):
    """In `folder`, the runs a recipe names (model.autoencoder, model.init_from) linked where its header trains
    them, each trained a few steps by its own recipe."""
    config = genlab.load_config(recipe).model
    named = {getattr(config, key, None) for key in ("autoencoder", "init_from")} - {None}
    made = dict((out, recipe.parent / name) for name, out in TRAIN_FIRST.findall(recipe.read_text()))
    for path in named:
        assert path in made, f"{recipe.name}: names {path} and its header does not say which recipe trains it"
        link = folder / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(_stage_run(made[path], tmp_path_factory), target_is_directory=True)
    with contextlib.chdir(folder):  # the recipe's relative paths resolve from here, as in a user's own folder
        yield


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_runs_from_another_folder(config, tmp_path, tmp_path_factory):
    with _first_stages_of(config, tmp_path_factory, tmp_path):
        _runs_as_a_user_runs_it(config, tmp_path)


def _runs_as_a_user_runs_it(config: Path, tmp_path: Path) -> None:
    run = genlab.fit(config, overrides=few_steps(config), out="run")
    assert run.summary["steps"] == 3
    use(run, tmp_path)
    printed = CliRunner().invoke(app, ["evaluate", "run"])
    assert printed.exit_code == 0, printed.output
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    chosen = run.model.sampling  # the recipe's eval.sampling, kept in the model folder, is what evaluate used
    assert chosen == genlab.load_config(config, few_steps(config)).eval.sampling
    assert {k: metrics.get("sampling", {}).get(k) for k in chosen} == chosen, config.name
    first = headline(run.config.model.family)[0]
    assert first.value(metrics) is not None, f"{config.name}: evaluate wrote no {first.key}"
    for figure in headline(run.config.model.family):  # the family's headline figures, each beside its baseline
        if figure.value(metrics) is not None:
            beside = f" ({figure.beside[1]}: " if figure.baseline(metrics) is not None else ""
            assert f"{figure.label}: {figure.value(metrics):.4g}{beside}" in printed.output
