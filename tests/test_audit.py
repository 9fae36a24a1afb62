"""The audit by class: a model that never draws a class is flagged, one that draws the real mix is not."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from genlab.cli import app
from genlab.config import load_config
from genlab.data import load_dataset
from genlab.evaluation.features import feature_net
from genlab.responsible.audit import audit_classes


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = load_dataset(load_config(None, ["data.image_size=8"]).data)
    net, _ = feature_net(data.train, 10, 300, tmp_path_factory.mktemp("features"))
    return data, net


def test_a_class_the_outputs_never_hold_is_flagged_and_the_real_mix_is_not(digits):
    data, net = digits
    real, y = data.test.x / 2 + 0.5, data.test.y
    faithful = data.val.x / 2 + 0.5  # other real images: the mix a perfect generator draws
    fair = audit_classes(net, real, y, data.train.y, faithful, [str(c) for c in range(10)])
    assert fair["mix_test"]["p_value"] > 0.01 and not fair["flags"]

    no_zeros = data.train.x[data.train.y != 0] / 2 + 0.5  # a generator that never draws a 0
    biased = audit_classes(net, real, y, data.train.y, no_zeros, [str(c) for c in range(10)])
    assert biased["mix_test"]["p_value"] < 1e-3
    flagged = {(f["class"], f["kind"]) for f in biased["flags"]}
    assert ("0", "under-represented in the outputs") in flagged and ("0", "generated worse than the others") in flagged
    assert all(c == "0" for c, _ in flagged), flagged
    assert biased["classes"][0]["generated_share"] < 0.02 and biased["classes"][0]["recall"] < 0.1

    rare = torch.cat([data.train.y[data.train.y != 3], data.train.y[data.train.y == 3][:5]])  # 3 nearly absent
    thin = audit_classes(net, real, y, rare, faithful, [str(c) for c in range(10)])
    assert {(f["class"], f["kind"]) for f in thin["flags"]} == {("3", "rare in the training data")}
    assert "weights: true" in thin["flags"][0]["mitigation"]


def test_audit_command_writes_its_report_and_refuses_runs_it_cannot_audit(tiny_run, runs):
    result = CliRunner().invoke(app, ["audit", str(tiny_run.path), "--n", "64"])
    assert result.exit_code == 0 and "class mix of 64 samples" in result.output
    audit = json.loads((tiny_run.path / "audit.json").read_text())
    assert len(audit["classes"]) == 10 and audit["samples"] == 64
    assert "Audit by class" in (tiny_run.path / "audit.html").read_text()
    refused = CliRunner().invoke(app, ["audit", str(runs["lm"].path)])
    assert refused.exit_code == 1 and "the transformer family declares no audit" in refused.output
