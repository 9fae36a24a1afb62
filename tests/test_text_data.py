"""Text sources, tokenizers and packing: what the transformer family trains on."""

import json
import re

import numpy as np
import pytest
import torch

from genlab import GenlabError, load_config
from genlab.data import load_dataset
from genlab.data.tokenize import EOS, pack, train_tokenizer
from genlab.prepare.store import cache_folder, text_records


def text_data(*overrides):
    return load_dataset(load_config(None, list(overrides)).data)


def test_a_single_file_is_split_in_order_train_first_as_nanogpt_does(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(chr(ord("a") + i % 26) for i in range(1000)))
    d = text_data("data.source=text", f"data.path={path}", "data.val_fraction=0.1", "data.test_fraction=0")
    assert d.spec.modality == "text" and len(d.train.x) == 1 and len(d.test.x) == 0
    assert d.train.x[0] + d.val.x[0] == path.read_text() and len(d.val.x[0]) == 100


def test_a_long_file_streams_in_pieces_that_join_back_exactly(tmp_path, monkeypatch):
    from genlab.prepare import read

    monkeypatch.setattr(read, "PIECE", 300)  # pieces of ~300 characters instead of a MB
    lines = [f"line {i}: caf\u00e9 \u2603{' ' * (i % 3)}\n" for i in range(400)]  # 2- and 3-byte characters
    path = tmp_path / "long.txt"
    path.write_text("".join(lines))
    over = ["data.source=text", f"data.path={path}", "data.val_fraction=0.1", "data.test_fraction=0.1"]
    d = text_data(*over)
    text = re.sub(" +\n", "\n", "".join(lines))  # clean: trailing spaces go
    assert [len(s.x) for s in (d.train, d.val, d.test)] == [1, 1, 1]
    assert d.train.x[0] + d.val.x[0] + d.test.x[0] == text
    raw = path.read_bytes()  # train ends at 80% of the bytes, as nanoGPT cuts by position (never inside a character)
    assert d.train.x[0] == re.sub(" +\n", "\n", raw[: round(0.8 * len(raw))].decode("utf-8", "ignore"))
    records = text_records(cache_folder(load_config(None, over).data), "train")
    assert len(records) > 10 and all(r.get("continues") for r in records[1:])


def test_a_folder_keeps_valid_text_and_reports_what_it_skipped(tmp_path, caplog):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(10):
        (folder / f"doc{i}.txt").write_text(f"document number {i} " * 5)
    (folder / "empty.txt").write_text("  \n")
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (folder / "rows.jsonl").write_text('{"text": "from jsonl"}\nnot json\n{"other": 1}\n{"text": "second"}\n')
    d = text_data("data.source=text", f"data.path={folder}", "data.split_seed=3")  # prepared, as fit reads it
    docs = d.train.x + d.val.x + d.test.x
    assert len(docs) == 12 and "from jsonl" in docs and "second" in docs and ("document number 0 " * 5).rstrip() in docs
    notes = " | ".join(d.notes)
    for reason in ("empty file: 1, e.g. empty.txt", "not UTF-8: 1, e.g. latin1.txt:1", "not a JSON object: 1",
                   "no text in field 'text': 1, e.g. rows.jsonl:3"):
        assert f"validate: {reason}" in notes and f"validate: {reason}" in caplog.text
    report = cache_folder(load_config(None, ["data.source=text", f"data.path={folder}", "data.split_seed=3"]).data)
    examples = json.loads((report / "data_report.json").read_text())["steps"][0]["examples"]
    assert examples["not UTF-8"] == ["latin1.txt:1 (byte 3)"] and examples["not a JSON object"] == ["rows.jsonl:2"]

    raw = text_data("data.source=text", f"data.path={folder}", "data.pipeline=[]")  # the source as it is
    docs = raw.train.x + raw.val.x + raw.test.x
    assert len(docs) == 13 and "caf au lait" in docs, "the raw source keeps a line's valid bytes"
    notes = " | ".join(raw.notes)
    assert "empty file: 1: empty.txt" in notes and "undecodable bytes dropped: 1 bytes in 1 file(s)" in notes
    assert "line not a JSON object: 1: rows.jsonl:2" in notes and "no text in field 'text': 1: rows.jsonl:3" in notes


def test_jsonl_field_is_configurable_and_no_text_is_a_clear_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"text {i}"}) for i in range(20)))
    d = text_data("data.source=text", f"data.path={path}", "data.text_field=body")
    assert len(d.train.x) + len(d.val.x) + len(d.test.x) == 20
    with pytest.raises(GenlabError, match="nothing is left.*no text in field 'text': 20, e.g. d.jsonl:1"):
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


def test_windows_at_any_stride_are_a_view_of_four_bytes_a_token():
    tok = train_tokenizer("char", ["abcdefgh"], 0)
    stream = torch.tensor(tok("abcdefgh")["input_ids"] + [tok.eos_token_id])
    windows = pack(tok, ["abcdefgh"], context=4, stride=1)
    assert windows.shape == (5, 5)
    assert all(torch.equal(windows[i], stream[i : i + 5]) for i in range(5))
    assert windows.untyped_storage().nbytes() == stream.numel() * 4, "one int32 stream: four bytes a token"
    assert pack(tok, ["abcdefgh"], context=4).untyped_storage().nbytes() == stream.numel() * 4
    assert torch.equal(pack(tok, ["abcdefgh"], context=4, stride=2), windows[::2])
    with pytest.raises(GenlabError, match="window_stride 9 must not exceed context 8"):
        load_config(None, ["model.family=transformer", "model.context=8", "model.window_stride=9"])


def test_a_long_document_tokenized_in_pieces_gives_the_tokens_of_the_whole(monkeypatch):
    import genlab.data.tokenize as tokenize

    docs = ["the first line\n  indented\n\nafter a blank line, words\n" * 400, "short", "a\nb\n" * 300]
    for kind in ("char", "bpe"):
        tok = train_tokenizer(kind, docs, 300)
        whole = torch.tensor([t for d in docs for t in (*tok(d, add_special_tokens=False)["input_ids"],
                                                        tok.eos_token_id)])
        monkeypatch.setattr(tokenize, "PIECE", 50)
        monkeypatch.setattr(tokenize, "BATCH", 120)  # a call of a few pieces: documents straddle the calls
        assert len(tokenize._pieces(docs[0])) > 100, "the long document is cut"
        windows = pack(tok, docs, context=16)
        n = (len(whole) - 1) // 16
        assert torch.equal(windows.long(), whole[: n * 16 + 1].unfold(0, 17, 16)), kind
        monkeypatch.undo()


def test_a_character_tokenizer_looked_up_in_numpy_gives_the_tokenizers_own_ids():
    from genlab.data.tokenize import _character_table, _pipeline, token_chunks

    seen = ["plain ascii\n", "café naïve — “quotes” 日本語 😀 e\u0301\r\n\ttab"]
    tok = train_tokenizer("char", seen, 0)
    assert _character_table(_pipeline(tok)) is not None
    assert _character_table(_pipeline(train_tokenizer("bpe", seen, 300))) is None
    for docs in ([*seen, "unknown ☃ 𝔘 characters", ""], ["the end token <|endoftext|> inside a document"]):
        looked_up = np.concatenate(list(token_chunks(tok, docs))).tolist()
        ids = [t for d in docs for t in (*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
        assert looked_up == ids


def test_a_document_given_in_parts_is_tokenized_as_the_whole_document(monkeypatch):
    """Parts cut at any line end (before indented lines too), pieces and batches smaller still: the tokens of
    the whole document, for character, byte-level BPE and Metaspace (which gets whole documents) tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import genlab.data.tokenize as tokenize

    doc = "".join(f"line {i} of it\n" + ("    indented\n" if i % 3 else "") for i in range(120))
    lines = doc.splitlines(keepends=True)
    parts = ["".join(lines[i:i + 7]) for i in range(0, len(lines), 7)]
    metaspace = Tokenizer(models.BPE())
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    metaspace.train_from_iterator([doc], trainers.BpeTrainer(vocab_size=120, special_tokens=[EOS], show_progress=False))
    monkeypatch.setattr(tokenize, "PIECE", 40)
    monkeypatch.setattr(tokenize, "BATCH", 100)
    for tok in (train_tokenizer("char", [doc], 0), train_tokenizer("bpe", [doc], 300),
                PreTrainedTokenizerFast(tokenizer_object=metaspace, eos_token=EOS)):
        given = [*((p, k == len(parts) - 1) for k, p in enumerate(parts)), ("another document", True)]
        got = np.concatenate(list(tokenize.piece_tokens(tok, given))).tolist()
        whole = [t for d in (doc, "another document") for t in (*tok(d, add_special_tokens=False)["input_ids"],
                                                               tok.eos_token_id)]
        assert got == whole, type(tok.backend_tokenizer.pre_tokenizer).__name__
