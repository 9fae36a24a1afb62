"""The seq2seq family: pair sources, training on dates to a held-out exact-match bar, translation
metrics beside the copy baseline, the command line, and a warm start from an encoder-only folder."""

import datetime
import json

import pytest
import torch
from typer.testing import CliRunner

import genlab
from genlab import GenlabError, load_config
from genlab.cli import app
from genlab.data import load_dataset
from genlab.evaluation.seq2seq import rouge_l, scores

from .conftest import TINY_DATES


def pairs(*overrides):
    d = load_dataset(load_config(None, list(overrides)).data)
    return d.train.x + d.val.x + d.test.x


def test_dates_are_many_surface_forms_of_iso_dates_drawn_from_a_seed():
    items = pairs("data.source=dates", "data.limit=500")
    assert items == pairs("data.source=dates", "data.limit=500") != pairs("data.source=dates", "data.limit=500",
                                                                          "data.split_seed=1")
    for source, target in items:
        assert datetime.date.fromisoformat(target) and source != target
    assert len({s.split()[0] for s, _ in items}) > 20, "many surface forms"


def test_docstrings_pair_code_without_its_docstring_with_the_first_line():
    items = pairs("data.source=docstrings", "data.limit=300")
    assert len(items) == 300
    for code, summary in items:
        assert code.lstrip().startswith(("def ", "async def ")) and summary not in code


def test_jsonl_pairs_keep_valid_records_and_name_the_bad_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    good = [json.dumps({"en": f"house {i}", "fr": f"maison {i}"}) for i in range(20)]
    path.write_text("\n".join([*good[:10], "{broken", json.dumps({"en": "no target"}), *good[10:]]))
    d = load_dataset(load_config(None, ["data.source=pairs", f"data.path={path}", "data.source_field=en",
                                        "data.target_field=fr"]).data)
    assert len(d.train.x) + len(d.val.x) + len(d.test.x) == 20
    assert any("p.jsonl:11" in n for n in d.notes) and any("p.jsonl:12" in n for n in d.notes)
    with pytest.raises(GenlabError, match="data.path: required"):
        load_dataset(load_config(None, ["data.source=pairs"]).data)


def test_rouge_l_and_scores_against_known_values():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("the cat", "the big cat") == pytest.approx(2 * 2 / 5)
    assert rouge_l("dog", "cat") == 0.0
    s = scores(["1987-03-03", "2001-01-01"], ["1987-03-03", "2001-01-02"])
    assert s["exact_match"] == 0.5 and 0 < s["chrf"] < 100


@pytest.fixture(scope="module")
def dates_run(tmp_path_factory):
    return genlab.fit(None, overrides=TINY_DATES, out=tmp_path_factory.mktemp("runs") / "dates")


def test_a_short_run_translates_held_out_dates_and_beats_copying(dates_run):
    m = genlab.evaluate(dates_run)
    assert m["split"] == "test" and m["num_pairs"] == 200
    assert m["exact_match"] >= 0.8, m["examples"]
    assert m["copy_source_baseline"]["exact_match"] == 0
    assert m["chrf"] > 2 * m["copy_source_baseline"]["chrf"] and m["bleu"] > m["copy_source_baseline"]["bleu"]
    report = dates_run.paths.report.read_text()
    assert "copying the source" in report and "exact match" in report


def test_the_folder_loads_in_transformers_and_the_cli_translates(dates_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = dates_run.paths.model
    tokenizer, net = AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder)
    ids = tokenizer("3 March 1987", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert type(net).__name__ == "T5ForConditionalGeneration" and net.generate(ids, max_new_tokens=12).shape[1] > 1

    run = str(dates_run.path)
    cli = CliRunner()  # the command in this process (test_cli.py runs the real process end to end)
    one = cli.invoke(app, ["sample", run, "--source", "Tuesday, 3 March 1987"])
    assert one.exit_code == 0 and one.stdout.strip() == "1987-03-03", one.output
    jobs = tmp_path / "in.jsonl"
    jobs.write_text('{"source": "March 4, 1999", "id": 1}\n{"source": "12/06/2010", "id": 2}\n')
    batch = cli.invoke(app, ["translate", run, str(jobs), "--out", str(tmp_path / "out.jsonl"), "--num-beams", "2"])
    assert batch.exit_code == 0, batch.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [1, 2], "every record comes back, in order, with its own fields"
    assert [o["prediction"] for o in out] == genlab.load(run).sample(2, seed=0, source=["March 4, 1999", "12/06/2010"])
    assert all(datetime.date.fromisoformat(o["prediction"]) for o in out)
    bad = cli.invoke(app, ["sample", run, "--source", "x", "--top-k", "0"])
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit)
    assert "sampling.top_k: input should be greater than or equal to 1" in bad.output


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A BERT-style encoder with its WordPiece tokenizer, saved as a hub checkpoint would be."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hub") / "tiny-bert"
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator([s + " " + t for s, t in pairs("data.source=dates", "data.limit=2000")],
                            trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    BertModel(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


def test_init_from_an_encoder_only_folder_warm_starts_an_encoder_decoder(tiny_bert, tmp_path):
    from transformers import EncoderDecoderModel

    over = [o for o in TINY_DATES if not o.startswith(("train.max_steps", "train.val_every"))]
    from transformers import BertModel

    # an lr too small to move a weight: what the folder holds is what the warm start put there
    run = genlab.fit(None, overrides=[*over, f"model.init_from={tiny_bert}", "train.max_steps=2",
                                      "train.val_every=2", "train.optimizer.lr=1e-12", "train.ema.enabled=false",
                                      "train.schedule.warmup_steps=0"], out=tmp_path / "r")
    net, bert = EncoderDecoderModel.from_pretrained(run.paths.model), BertModel.from_pretrained(tiny_bert)
    assert net.config.encoder.model_type == "bert" and net.config.decoder.add_cross_attention
    pretrained = bert.state_dict()
    for half, prefix in ((net.encoder, ""), (net.decoder, "bert.")):
        weights = half.state_dict()
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.1.attention.self.query.weight",
                     "encoder.layer.0.output.dense.weight"):
            assert torch.allclose(weights[prefix + name], pretrained[name], atol=1e-6), f"{prefix}{name} not copied"
    cross = net.decoder.state_dict()["bert.encoder.layer.0.crossattention.self.query.weight"]
    assert cross.shape == (32, 32) and "encoder.layer.0.crossattention.self.query.weight" not in pretrained
    assert isinstance(genlab.load(run.path).sample(1, seed=0, source="3 march 1987")[0], str)


def test_a_seq2seq_run_is_audited_by_its_answers_and_its_likelihood_of_sentence_pairs(dates_run, tmp_path):
    from typer.testing import CliRunner

    from genlab.cli import app

    probes = tmp_path / "probes.yaml"
    probes.write_text("templates: ['{group} was born on 3 May 1990', 'the {group} left on 1/2/03']\n"
                      "axes: {gender: [he, she], age: [the child, the old man]}\n"
                      "pairs: [{axis: gender, pair: ['1990-05-03', '2003-01-02']}]\n")
    result = CliRunner().invoke(app, ["audit", str(dates_run.path), "--n", "3", "--probes", str(probes)])
    assert result.exit_code == 0 and "24 answers over 2 axes" in result.output, result.output
    audit = json.loads((dates_run.path / "audit.json").read_text())
    assert {g["name"] for g in audit["gaps"]} >= {"gender/she: sentiment", "age/the child: length"}
    assert audit["likelihood"]["pairs"] == 1
    ll = dates_run.model.log_likelihood(["1990-05-03", "1990-03-05"], source="3 May 1990")
    assert ll[0] > ll[1], "a trained translator finds the right date likelier than day and month swapped"
    bad = CliRunner().invoke(app, ["audit", str(dates_run.path), "--group", "x"])
    assert bad.exit_code == 1 and "--group: the seq2seq family's audit does not take it" in bad.output
