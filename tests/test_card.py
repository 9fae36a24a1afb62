"""Model cards: `genlab card RUN` writes model/README.md in the Hugging Face format, which huggingface_hub's own
ModelCard reads back; what the run has not measured is said, and export carries the card."""

from __future__ import annotations

import json
import shutil

from huggingface_hub import ModelCard
from typer.testing import CliRunner

import genlab
from genlab.cli import app


def test_the_card_says_what_the_run_holds_and_export_carries_it(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir, ignore=shutil.ignore_patterns("metrics.json", "audit.json", "report.html"))
    written = CliRunner().invoke(app, ["card", str(run_dir), "--license", "apache-2.0"])
    assert written.exit_code == 0, written.output
    card = ModelCard.load(run_dir / "model" / "README.md")
    assert (card.data.license, card.data.library_name, card.data.pipeline_tag) == \
        ("apache-2.0", "diffusers", "unconditional-image-generation")
    assert card.data.datasets == ["digits"] and "genlab" in card.data.tags and card.data.eval_results is None
    assert "Not evaluated yet: `genlab evaluate" in card.text and "Not audited yet" in card.text
    assert "- examples: " in card.text and "steps of batch 16" in card.text

    metrics = genlab.evaluate(genlab.load(run_dir))
    CliRunner().invoke(app, ["card", str(run_dir)])
    card = ModelCard.load(run_dir / "model" / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["fid"] == round(metrics["fid"], 6) and results["precision"] == round(metrics["precision"], 6)
    assert f"| FID | {metrics['fid']:.4g} | real vs real: {metrics['fid_real_baseline']:.4g} |" in card.text
    assert card.data.license == "other" and "Not evaluated yet" not in card.text

    (run_dir / "audit.json").write_text(json.dumps({"samples": 64, "flags": [
        {"class": "3", "kind": "under-represented in the outputs", "detail": "2% against 10%", "mitigation": "m"}]}))
    exported = CliRunner().invoke(app, ["export", str(run_dir), "--to", "docker", "--out", str(tmp_path / "ctx")])
    assert exported.exit_code == 0, exported.output
    shipped = ModelCard.load(tmp_path / "ctx" / "model" / "README.md")
    assert "1 flag(s)" in shipped.text and "- 3: under-represented in the outputs (2% against 10%)" in shipped.text
    onnx = CliRunner().invoke(app, ["export", str(run_dir), "--to", "onnx", "--out", str(tmp_path / "onnx")])
    assert onnx.exit_code == 0 and (tmp_path / "onnx" / "README.md").read_text() == shipped.content


def test_a_run_without_a_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("name: half\n")  # a fit that never got as far as its model
    result = CliRunner().invoke(app, ["card", str(tmp_path)])
    assert result.exit_code != 0 and "no model folder yet" in result.output and "Traceback" not in result.output
