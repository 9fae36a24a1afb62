"""Tokenizers trained on a training split, and documents packed into fixed-length token windows.

Both tokenizers are `tokenizers` pipelines wrapped as a transformers fast tokenizer, so the model
folder loads with `AutoTokenizer.from_pretrained` and no genlab code.
"""

from __future__ import annotations

import re
from itertools import chain

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # between documents, and the end of a generation
PAD = "<pad>"  # only where padding must differ from the end (seq2seq batches)


def train_tokenizer(kind: str, documents: list[str], vocab_size: int, pad: bool = False) -> PreTrainedTokenizerFast:
    """'char': one token per character seen in `documents`; 'bpe': byte-level BPE of `vocab_size` tokens.

    Padding is EOS unless `pad`, which adds a token of its own.
    """
    specials = [EOS, PAD] if pad else [EOS]
    if kind == "char":
        chars = sorted(set().union(*map(set, documents)))
        vocab = {**{s: i for i, s in enumerate(specials)}, **{c: i + len(specials) for i, c in enumerate(chars)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")  # (?m): '.' matches \n
        tok.decoder = decoders.Fuse()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(documents, trainer)
    # clean_up_tokenization_spaces would turn " ." into "." when decoding: text must round-trip
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD if pad else EOS,
                                   clean_up_tokenization_spaces=False)


PIECE = 1 << 20  # characters of one document tokenized at once


def _pieces(doc: str) -> list[str]:
    """The document cut after a newline that a non-space follows, about every PIECE characters: every
    tokenizer here splits words there already (byte-level BPE's pre-tokenizer, characters), so the tokens of
    the pieces are the document's."""
    pieces, start = [], 0
    while len(doc) - start > PIECE:
        cut = _newline_before_word.search(doc, start + PIECE)
        if cut is None:
            break
        pieces.append(doc[start:cut.end()])
        start = cut.end()
    return [*pieces, doc[start:]]


_newline_before_word = re.compile(r"\n(?=\S)")


def pack(tokenizer, documents: list[str], context: int, stride: int | None = None, batch: int = 1024
         ) -> torch.Tensor:
    """Documents joined with EOS after each, cut into (N, context + 1) windows: inputs and shifted targets.

    By default windows overlap by one token, so every token is a target exactly once; the tail shorter
    than a window is dropped, unless it is all there is. A smaller `stride` starts a window every `stride`
    tokens. The windows are a view over one int32 stream, tokenized `batch` documents at a time, so they
    cost four bytes a token whatever the stride (models take them as indices; `long()` per batch for losses).
    """
    if not documents:
        return torch.empty(0, context + 1, dtype=torch.int32)
    eos = tokenizer.eos_token_id
    chunks, pieces, ends = [], [], []
    for k, doc in enumerate(documents):
        pieces += _pieces(doc)  # a long document a megabyte at a time: its Python ints never all at once
        ends.append(len(pieces))
        if len(pieces) >= batch or k == len(documents) - 1:
            ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
            last = set(e - 1 for e in ends)
            chunks.append(np.fromiter(chain.from_iterable((*i, eos) if j in last else i for j, i in enumerate(ids)),
                                      np.int32, count=sum(map(len, ids)) + len(ends)))
            pieces, ends = [], []
    stream = np.concatenate(chunks)
    if len(stream) < context + 1:
        stream = np.concatenate([stream, np.full(context + 1 - len(stream), eos, np.int32)])
    tokens = torch.from_numpy(stream)
    step = stride if stride is not None and stride < context else context
    return tokens.unfold(0, context + 1, step)
