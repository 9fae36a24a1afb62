"""Text sources, tokenizers and packing: what the transformer family trains on."""

import json

import pytest
import torch

from genlab import GenlabError, load_config
from genlab.data import load_dataset
from genlab.data.tokenize import EOS, pack, train_tokenizer


def text_data(*overrides):
    return load_dataset(load_config(None, list(overrides)).data)


def test_a_single_file_is_split_in_order_train_first_as_nanogpt_does(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(chr(ord("a") + i % 26) for i in range(1000)))
    d = text_data("data.source=text", f"data.path={path}", "data.val_fraction=0.1", "data.test_fraction=0")
    assert d.spec.modality == "text" and len(d.train.x) == 1 and len(d.test.x) == 0
    assert d.train.x[0] + d.val.x[0] == path.read_text() and len(d.val.x[0]) == 100


def test_a_folder_keeps_valid_text_and_reports_what_it_skipped(tmp_path, caplog):
    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 5)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text('{"text": "from jsonl"}\nnot json\n{"other": 1}\n{"text": "second"}\n')
    d = text_data("data.source=text", f"data.path={tmp_path}", "data.split_seed=3")
    docs = d.train.x + d.val.x + d.test.x
    assert len(docs) == 13 and "caf au lait" in docs and "from jsonl" in docs and "second" in docs
    notes = " | ".join(d.notes)
    assert "empty file: 1: empty.txt" in notes and "undecodable bytes dropped: 1 bytes in 1 file(s)" in notes
    assert "line not a JSON object: 1: rows.jsonl:2" in notes and "no text in field 'text': 1: rows.jsonl:3" in notes
    assert "empty file: 1" in caplog.text


def test_jsonl_field_is_configurable_and_no_text_is_a_clear_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"text {i}"}) for i in range(20)))
    d = text_data("data.source=text", f"data.path={path}", "data.text_field=body")
    assert len(d.train.x) + len(d.val.x) + len(d.test.x) == 20
    with pytest.raises(GenlabError, match="no usable text"):
        text_data("data.source=text", f"data.path={path}")
    with pytest.raises(GenlabError, match="data.path: required"):
        text_data("data.source=text")


@pytest.mark.parametrize("source, least", [("python_docs", 70), ("python_code", 500)])
def test_built_in_corpora_need_no_download(source, least):
    d = text_data(f"data.source={source}")
    assert len(d.train.x) + len(d.val.x) + len(d.test.x) >= least
    assert set(d.train.x).isdisjoint(d.test.x), "documents are split whole"


def test_char_tokenizer_round_trips_and_knows_only_the_training_characters():
    tok = train_tokenizer("char", ["Hello,\n wörld!", "tabs\tand spaces  "], 0)
    for text in ("Hello,\n wörld!", " , spaces  \t"):
        assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) == len(set("Hello,\n wörld!tabs\tand spaces  ")) + 1
    assert tok("Z")["input_ids"] == [tok.convert_tokens_to_ids(EOS)], "an unseen character is not invented"


def test_bpe_tokenizer_round_trips_any_text_and_trains_deterministically():
    docs = [f"def function_{i}(x):\n    return x * {i}  # über\n" for i in range(200)]
    a, b = train_tokenizer("bpe", docs, 300), train_tokenizer("bpe", docs, 300)
    assert a.get_vocab() == b.get_vocab() and len(a) == 300
    for text in ("def f(y):\n    return 'ünseen ✓'", "  spaces . , "):
        assert a.decode(a(text)["input_ids"]) == text
    assert len(a(docs[0])["input_ids"]) < len(docs[0]) / 2, "merges compress the text they were trained on"


def test_pack_puts_eos_after_every_document_and_every_token_is_a_target_once():
    tok = train_tokenizer("char", ["abc", "de"], 0)
    windows = pack(tok, ["abc", "de", "abcde"], context=3)
    eos = tok.eos_token_id
    stream = tok("abc")["input_ids"] + [eos] + tok("de")["input_ids"] + [eos] + tok("abcde")["input_ids"] + [eos]
    assert windows.shape == (4, 4)
    assert torch.equal(torch.cat([windows[0], *(w[1:] for w in windows[1:])]), torch.tensor(stream))
    assert pack(tok, [], 3).shape == (0, 4)
