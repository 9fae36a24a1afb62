"""The seq2seq family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from genlab.config import ModelConfig
from genlab.config.section import Sampling
from genlab.config.transformer import LoraConfig, Stops, check_text_model


class Seq2SeqConfig(ModelConfig):
    family: Literal["seq2seq"] = "seq2seq"
    capabilities: ClassVar[tuple[str, ...]] = ("text2text",)
    architecture: Literal["t5", "bart"] = "t5"
    tokenizer: Literal["char", "bpe"] = "char"  # trained on the training pairs (sources and targets)
    vocab_size: int = Field(2048, ge=260)  # bpe only
    max_source_length: int = Field(128, ge=4)  # tokens; longer sources are cut (counted in train.json)
    max_target_length: int = Field(32, ge=2)
    layers: int = Field(2, ge=1)  # in the encoder, and again in the decoder
    width: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    mlp_width: int | None = Field(None, ge=8)  # None: 4 x width
    dropout: float = Field(0.1, ge=0, lt=1)
    # a seq2seq folder or hub id (T5, BART, ...), or an encoder-only one (BERT-style), which warm-starts
    # both halves of an encoder-decoder, as transformers' EncoderDecoderModel does
    init_from: str | None = None
    pretrained_weights: bool = True  # False: init_from's architecture and tokenizer, fresh weights (a baseline)
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Seq2SeqConfig:
        check_text_model(self)
        return self


class Seq2SeqSampling(Sampling):
    max_new_tokens: int = Field(64, ge=1, le=100_000, description="Tokens to generate at most.")
    num_beams: int = Field(1, ge=1, le=64, description="Beam search width.")
    temperature: float = Field(0.0, ge=0, le=100, description="0 is greedy (or beam search with num_beams > 1).")
    top_k: int | None = Field(None, ge=1, le=2**31 - 1, description="Sample from the k likeliest tokens.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: the smallest set with this mass.")
    stop: Stops = Field([], description="Cut the text before the first of these (up to 4).")
