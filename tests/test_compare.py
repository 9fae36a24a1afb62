"""genlab compare: config differences, shared figures with intervals, overlaid curves and samples."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.config import flatten
from genlab.errors import GenlabError
from genlab.study.compare import compare

from .conftest import tiny


def test_two_runs_side_by_side_in_the_terminal_and_the_page(tiny_run, tmp_path):
    first = tmp_path / "base"
    shutil.copytree(tiny_run.path, first)
    other = genlab.fit(None, overrides=tiny("train.optimizer.lr=0.003"), out=tmp_path / "faster")
    genlab.evaluate(genlab.Run(first))
    shown = CliRunner().invoke(app, ["compare", str(first), str(other.path), "--out", str(tmp_path / "c.html"),
                                     "--n", "4"])
    assert shown.exit_code == 0, shown.output
    assert "train.optimizer.lr" in shown.output and "FID" not in shown.output  # one run holds no shared figure
    page = (tmp_path / "c.html").read_text()
    assert "Not evaluated yet (genlab evaluate RUN): faster" in page
    assert page.count("<polyline") >= 4, "train and validation loss, one line per run"
    assert page.count("data:image/png;base64,") == 2 and "<h3>base</h3>" in page and "<h3>faster</h3>" in page
    genlab.evaluate(other)
    result = compare([first, other.path])
    fid = next(f for f in result["figures"] if f["key"] == "fid")
    assert result["figures"][0]["key"] == "fid" and fid["higher_is_better"] is False
    assert all(v is not None for v in fid["values"]) and all(len(i) == 2 for i in fid["intervals"])
    assert result["config_differences"]["train.optimizer.lr"] == [0.001, 0.003]
    with pytest.raises(GenlabError, match="two or more run directories"):
        compare([first])
    with pytest.raises(GenlabError, match="no such run directory"):
        compare([first, tmp_path / "nowhere"])
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": [1, 2]}
