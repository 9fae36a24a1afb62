"""Tokenizers trained on a training split, and documents packed into fixed-length token windows.

Both tokenizers are `tokenizers` pipelines wrapped as a transformers fast tokenizer, so the model
folder loads with `AutoTokenizer.from_pretrained` and no genlab code.
"""

from __future__ import annotations

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


def pack(tokenizer, documents: list[str], context: int, stride: int | None = None) -> torch.Tensor:
    """Documents joined with EOS after each, cut into (N, context + 1) windows: inputs and shifted targets.

    By default windows overlap by one token, so every token is a target exactly once; the tail shorter
    than a window is dropped, unless it is all there is. A smaller `stride` starts a window every `stride`
    tokens: a view over one stream, so stride 1 costs no more memory than the text.
    """
    if not documents:
        return torch.empty(0, context + 1, dtype=torch.long)
    eos = tokenizer.eos_token_id
    stream = [t for ids in tokenizer(documents, add_special_tokens=False)["input_ids"] for t in (*ids, eos)]
    if len(stream) < context + 1:
        stream += [eos] * (context + 1 - len(stream))
    tokens = torch.tensor(stream, dtype=torch.long)
    if stride is not None and stride < context:
        return tokens.unfold(0, context + 1, stride)
    n = (len(tokens) - 1) // context
    return tokens[: n * context + 1].unfold(0, context + 1, context).contiguous()
