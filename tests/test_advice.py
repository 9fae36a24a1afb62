"""genlab advise: the data are read, families proposed in the goal's order with a reason each, and every proposed
config validates and trains on the user's data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.config import load_config
from genlab.errors import GenlabError
from genlab.study.advice import data_section, profile, propose


def test_images_with_classes_get_three_families_in_the_goals_order(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(60):
        folder = tmp_path / "imgs" / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    shown = CliRunner().invoke(app, ["advise", str(tmp_path / "imgs"), "--out", str(tmp_path / "advice")])
    assert shown.exit_code == 0, shown.output
    assert "modality image" in shown.output and "classes 10" in shown.output and "genlab bakeoff" in shown.output
    first = load_config(tmp_path / "advice" / "digits-diffusion.yaml")
    assert first.model.class_conditional and first.data.path == tmp_path / "imgs" and first.train.max_time == 240
    facts = profile(data_section(tmp_path / "imgs"))
    assert [p.family for p in propose(facts, "quality", 240)] == ["diffusion", "gan", "vae"]
    assert [p.family for p in propose(facts, "quality", 60)][0] == "gan", "a short budget favours the GAN"
    assert [p.family for p in propose(facts, "control")][0] == "vae"
    assert [p.family for p in propose(facts, "speed")][0] == "gan"
    with pytest.raises(GenlabError, match="--goal: 'beauty'"):
        propose(facts, "beauty")


def test_tables_text_and_pairs_each_get_their_family(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=80), "kind": rng.choice(["a", "b"], 80)}).to_csv(tmp_path / "t.csv",
                                                                                         index=False)
    (tmp_path / "book.txt").write_text("It was a bright cold day in April. " * 400)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"source": f"{i} plus {i}", "target": str(2 * i)}) + "\n"
                                                  for i in range(200)))
    for target, family in (("t.csv", "tabular_vae"), ("book.txt", "transformer"), ("pairs.jsonl", "seq2seq")):
        result = CliRunner().invoke(app, ["advise", str(tmp_path / target), "--out", str(tmp_path / family)])
        assert result.exit_code == 0 and f"1. {family}:" in result.output, result.output
        (config,) = (tmp_path / family).glob("*.yaml")
        cfg = load_config(config)
        assert cfg.model.family == family and str(cfg.data.path).endswith(target)
    assert data_section("digits") == {"source": "digits"}
    refused = CliRunner().invoke(app, ["advise", str(tmp_path / "nothing.bin")])
    assert refused.exit_code == 1 and "not a config, a built-in data set" in refused.output
