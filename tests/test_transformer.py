"""The transformer family end to end: training, sampling, evaluation, the transformers folder,
exact resume, starting from a pretrained folder, and LoRA."""

import logging
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.data import load_dataset
from genlab.evaluation.text import held_out_loss
from genlab.models import Transformer
from genlab.models.hf import causal_lm_folder
from genlab.responsible.memorization import CopyIndex

from .conftest import Crash

TINY_LM = [
    "model.family=transformer", "data.source=python_docs", "model.context=32", "model.width=32", "model.layers=2",
    "model.heads=2", "train.batch_size=16", "train.max_steps=100", "train.val_every=50", "train.checkpoint_every=50",
    "train.log_every=10", "train.grid_size=2", "train.progress=none", "train.optimizer.lr=0.003",
    "eval.num_samples=6", "eval.sampling.max_new_tokens=20",
]


def tiny_lm(*extra):
    return [*TINY_LM, *extra]


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    return genlab.fit(None, overrides=tiny_lm(), out=tmp_path_factory.mktemp("runs") / "lm")


def test_training_beats_the_untrained_model_by_a_clear_margin(lm_run):
    cfg = lm_run.config
    trained = lm_run.model
    untrained, _ = Transformer.build(cfg.model, load_dataset(cfg.data), cfg.train)
    windows = trained.encode(load_dataset(cfg.data).test.x)
    a, b = held_out_loss(trained, windows, 64), held_out_loss(untrained, windows, 64)
    assert a["bits_per_character"] < 0.7 * b["bits_per_character"], (a, b)
    assert (lm_run.path / "samples/step_000050.txt").read_text().strip()
    s = lm_run.summary
    assert s["tokens_per_s"] > 0 and s["data"]["shape"] == [32]


def test_the_model_folder_loads_in_plain_transformers(lm_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    folder = str(lm_run.paths.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "The import statement\n  x = 1"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "LlamaForCausalLM"
    out = pipeline("text-generation", model=folder)("The ", max_new_tokens=10, do_sample=False)
    assert out[0]["generated_text"].startswith("The ") and len(out[0]["generated_text"]) > 4


def test_same_seed_same_text_and_batched_requests_match_requests_drawn_alone(lm_run):
    model = lm_run.model
    a = lm_run.sample(3, seed=5, prompt="The ", max_new_tokens=15)
    assert a == lm_run.sample(3, seed=5, prompt="The ", max_new_tokens=15) and len(set(a)) > 1
    prompts = ["The", "A much longer prompt about modules"]
    together = model.sample(2, prompt=prompts, max_new_tokens=12, temperature=0)
    alone = [model.sample(1, prompt=p, max_new_tokens=12, temperature=0)[0] for p in prompts]
    assert together == alone, "left padding must not change a greedy continuation"
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2)]
    mixed = model.sample(2, generator=seeds, prompt=prompts, max_new_tokens=12)
    assert mixed == [model.sample(1, generator=torch.Generator().manual_seed(s), prompt=p, max_new_tokens=12)[0]
                     for s, p in zip((1, 2), prompts, strict=True)]


def test_a_preview_continues_its_prompts_as_the_run_samples_with_new_tokens_held(lm_run, monkeypatch):
    model = lm_run.model
    monkeypatch.setattr(model, "sampling", {"max_new_tokens": 300, "temperature": 0.5, "top_k": 5})
    assert model.preview_options() == {"max_new_tokens": 200, "temperature": 0.5, "top_k": 5}
    prompts = [model.preview_prompts[i % len(model.preview_prompts)] for i in range(2)]
    drawn = model.sample(2, generator=torch.Generator().manual_seed(0), prompt=prompts, max_new_tokens=200,
                         temperature=0.5, top_k=5)
    assert model.preview(2, torch.Generator().manual_seed(0)) == [p + t for p, t in zip(prompts, drawn, strict=True)]


def test_long_generations_slide_past_the_context_and_long_prompts_are_cut(lm_run, caplog):
    model = lm_run.model
    text = lm_run.sample(1, seed=0, prompt="x", max_new_tokens=80, stop=["<never>"])[0]
    assert len(model.tokenizer(text)["input_ids"]) >= 60, "generation goes on past the 32-token context"
    with caplog.at_level(logging.WARNING, logger="genlab"):
        lm_run.sample(1, seed=0, prompt="word " * 50, max_new_tokens=5)
    assert "prompt: 250 tokens, more than the 27 that fit" in caplog.text
    stopped = lm_run.sample(4, seed=0, prompt="The ", max_new_tokens=60, stop=["e"])
    assert all("e" not in s for s in stopped)


def test_evaluate_scores_held_out_text_and_reports_continuations(lm_run):
    m = genlab.evaluate(lm_run)
    assert m["split"] == "test" and m["tokens"] > 1000 and m["characters"] > 1000
    assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"])
    assert 0 < m["distinct_1"] <= 1 and 0 < m["distinct_2"] <= 1 and m["num_generated"] == 6
    assert 1.0 < m["bits_per_character"] < 8
    assert m["copied_share"] == 0.0  # 20-token continuations cannot hold a 50-character copy
    report = lm_run.paths.report.read_text()
    assert "bits per character" in report and report.count("<pre>") >= 6


def test_the_model_folder_keeps_a_copy_index_of_its_training_text_that_genlab_filter_uses(lm_run, tmp_path):
    documents = load_dataset(lm_run.config.data).train.x
    index = CopyIndex.load(lm_run.path / "model")
    assert len(index) > 0.5 * sum(len(d) for d in documents)
    passage = max(documents, key=len)[:120]
    source = tmp_path / "out.txt"
    source.write_text(f"first line\nsome words of my own, then {passage} and mine again\n")
    listed = CliRunner().invoke(app, ["filter", str(source), "--model", str(lm_run.path), "--kind", "memorized"])
    assert listed.exit_code == 0 and f"{source}:2:28: memorized" in listed.output, listed.output
    assert "1 finding(s)" in listed.output
    redacted = CliRunner().invoke(app, ["filter", str(source), "--model", str(lm_run.path), "--action", "redact"])
    assert redacted.exit_code == 0 and "[MEMORIZED] and mine again" in (tmp_path / "out.redacted.txt").read_text()
    alone = CliRunner().invoke(app, ["filter", str(source), "--kind", "memorized"])
    assert alone.exit_code == 1 and "name the model" in alone.output


def test_cli_samples_text_and_rejects_image_options(lm_run, tmp_path):
    run = str(lm_run.path)
    # one process (each costs the imports): the file holds the text the same seed gives in Python
    proc = subprocess.run([sys.executable, "-m", "genlab", "sample", run, "--prompt", "The ", "--max-new-tokens",
                           "20", "--seed", "1", "--out", str(tmp_path / "t.txt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = "The " + lm_run.sample(1, seed=1, prompt="The ", max_new_tokens=20)[0]
    assert (tmp_path / "t.txt").read_text().startswith(expected)
    bad = CliRunner().invoke(app, ["sample", run, "--sampler", "ddim"])  # in this process: the same app
    assert bad.exit_code == 2 and "--sampler: a transformer run takes no such option" in bad.output
    assert "--temperature" in bad.output and isinstance(bad.exception, SystemExit), "one line, no traceback"


def test_text_options_on_an_image_run_are_a_clear_error(tiny_run):
    said = CliRunner().invoke(app, ["sample", str(tiny_run.path), "--prompt", "hi"])
    assert said.exit_code == 2 and isinstance(said.exception, SystemExit), "one line, no traceback"
    assert "--prompt: a diffusion run takes no such option" in said.output
    assert "(its options: --sampler, --steps, --guidance-scale, --labels)" in " ".join(said.output.split())


def test_resume_is_exact_for_a_language_model(lm_run, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=tiny_lm(), out=tmp_path / "broken", callbacks=[Crash(70)])
    resumed = genlab.fit(resume=tmp_path / "broken")
    a, b = load_file(lm_run.paths.model / "model.safetensors"), load_file(resumed.paths.model / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_and_bpe_train_too(tmp_path):
    run = genlab.fit(None, overrides=tiny_lm("model.architecture=gpt2", "model.tokenizer=bpe", "model.vocab_size=400",
                                             "train.max_steps=10", "train.val_every=10"), out=tmp_path / "r")
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(run.paths.model)).__name__ == "GPT2LMHeadModel"
    assert len(run.model.tokenizer) == 400 and isinstance(run.sample(1, seed=0, max_new_tokens=5)[0], str)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small GPT-2 pretrained on the Python docs, in a transformers folder with its tokenizer, as a hub
    model would be: what `init_from` starts from."""
    run = genlab.fit(None, overrides=tiny_lm("model.architecture=gpt2", "model.context=64", "train.val_every=100"),
                     out=tmp_path_factory.mktemp("hub") / "pretrained")
    return run.paths.model


def test_init_from_a_pretrained_folder_keeps_its_weights_and_tokenizer(pretrained, tmp_path):
    run = genlab.fit(None, overrides=tiny_lm(f"model.init_from={pretrained}", "model.context=128",
                                             "train.max_steps=5", "train.val_every=5"), out=tmp_path / "r")
    assert run.model.context == 64, "the context is capped at the pretrained model's positions"
    assert run.model.tokenizer.get_vocab() == genlab.load(pretrained.parent).model.tokenizer.get_vocab()
    from transformers import GPT2LMHeadModel

    assert isinstance(GPT2LMHeadModel.from_pretrained(run.paths.model), GPT2LMHeadModel)


@pytest.mark.parametrize("export", ["merged", "adapter"])
def test_lora_trains_only_adapters_and_exports_loadable_folders(pretrained, tmp_path, export):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    over = tiny_lm(f"model.init_from={pretrained}", "model.lora.r=16", f"model.lora.export={export}",
                   "data.source=python_code", "data.limit=40", "train.max_steps=60", "train.val_every=60",
                   "train.optimizer.lr=0.02", "train.ema.enabled=false")
    run = genlab.fit(None, overrides=over, out=tmp_path / "r")
    base = load_file(pretrained / "model.safetensors")
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)["state_dict"]
    frozen = {k.split("base_model.model.")[-1].replace(".base_layer", ""): v for k, v in ckpt.items()
              if "lora_" not in k}
    assert all(torch.equal(base[k], frozen[k]) for k in base if k in frozen), "base weights bit-identical"
    assert sum(k in frozen for k in base) >= len(base) - 1
    windows = run.model.encode(load_dataset(run.config.data).test.x)
    before = Transformer.build(run.config.model, load_dataset(run.config.data))[0]
    assert held_out_loss(run.model, windows, 64)["loss"] < 0.97 * held_out_loss(before, windows, 64)["loss"]
    folder = run.paths.model
    if export == "adapter":
        assert (folder / "adapter_config.json").is_file()
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained), folder)
    else:
        assert not (folder / "adapter_config.json").exists()
        loaded = AutoModelForCausalLM.from_pretrained(folder)
    ids = run.model.tokenizer("The module", return_tensors="pt")["input_ids"]
    ours = run.model.lm(ids).logits
    assert torch.allclose(loaded(ids).logits, ours, atol=1e-4)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(pretrained)(ids).logits, ours, atol=1e-3), \
        "the adapters changed the model"
    lm, tokenizer = causal_lm_folder(folder)  # what the text engine's process decodes with: no family class
    assert torch.allclose(lm(ids).logits, ours, atol=1e-4) and tokenizer.get_vocab() == run.model.tokenizer.get_vocab()
    if export == "adapter":  # the base it names, loaded in a process that never imports the training stack
        code = ("import sys; from genlab.models.hf import causal_lm_folder; "
                f"lm, _ = causal_lm_folder({str(folder)!r}); "
                "print(type(lm).__name__, sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.stdout.split() == ["PeftModelForCausalLM", "[]"], proc.stderr[-2000:]


def test_muon_trains_a_language_model_and_resumes_exactly(tmp_path):
    over = tiny_lm("train.optimizer.name=muon", "train.max_steps=20", "train.val_every=10", "train.checkpoint_every=10")
    whole = genlab.fit(None, overrides=over, out=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=over, out=tmp_path / "broken", callbacks=[Crash(15)])
    resumed = genlab.fit(resume=tmp_path / "broken")
    a, b = load_file(whole.paths.model / "model.safetensors"), load_file(resumed.paths.model / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "both inner optimizers' states live in the checkpoint"
    ckpt = torch.load(whole.paths.last_checkpoint, weights_only=True)
    assert ckpt["optimizer_states"][0]["muon"]["state"], "the hidden matrices were stepped by Muon"
