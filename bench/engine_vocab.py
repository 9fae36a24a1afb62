"""The text engine's decoding speed with a real vocabulary: a language model's own sampling, not its forward.

A 4-layer, 192-wide Llama with GPT-2's vocabulary size (50,257 tokens; random weights, built here: nothing is
downloaded) decodes in genlab's TextEngine, one thread, with 1 and 32 sequences kept in flight, for plain
temperature sampling and with top_p 0.9 (the rows that cut their tail are the only ones sorted). Prints
generated tokens/s and milliseconds per step, each point's rounds interleaved, medians. Figures only.

Usage: python bench/engine_vocab.py [SECONDS_PER_POINT] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import warnings

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from genlab.serving.engine import TextEngine, TextParams

warnings.filterwarnings("ignore")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
VOCAB = 50_257


def model() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer, words.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t0", unk_token="t0")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:  # through a folder, as a server loads it
        LlamaForCausalLM(config).save_pretrained(folder)
        return LlamaForCausalLM.from_pretrained(folder).eval(), tokenizer


def decode(lm, tokenizer, batch: int, params: TextParams) -> tuple[float, float]:
    """(generated tokens/s, ms per decoding step) with `batch` sequences of 64 tokens kept in flight."""
    steps, tokens, finished = [0], [0], threading.Semaphore(0)
    engine = TextEngine(lm, tokenizer, max_batch_size=batch, on_step=lambda size: steps.__setitem__(0, steps[0] + 1))
    prompt = tokenizer("t5 t6 t7 t8")["input_ids"]

    def submit(seed: int) -> None:
        def emit(event: tuple) -> None:
            if event[0] == "done":
                tokens[0] += event[3]
                finished.release()
        engine.submit(prompt, params, seed, emit)

    for seed in range(batch):
        submit(seed)
    start, first_step, first_tokens, seed = time.perf_counter(), steps[0], tokens[0], batch
    while time.perf_counter() - start < SECONDS:
        finished.acquire()
        submit(seed)
        seed += 1
    wall = time.perf_counter() - start
    rate, step_ms = (tokens[0] - first_tokens) / wall, 1000 * wall / max(1, steps[0] - first_step)
    engine.stop(drain_seconds=0)
    return rate, step_ms


def main() -> None:
    torch.set_num_threads(1)
    lm, tokenizer = model()
    points = {(b, name): [] for b in (1, 32) for name in ("temperature 1", "top_p 0.9")}
    settings = {"temperature 1": TextParams(max_tokens=64, min_tokens=64),
                "top_p 0.9": TextParams(max_tokens=64, min_tokens=64, top_p=0.9)}
    for _ in range(ROUNDS):
        for batch, name in points:
            points[(batch, name)].append(decode(lm, tokenizer, batch, settings[name]))
    print(f"TextEngine, {VOCAB:,}-token vocabulary, one thread, {SECONDS:.0f} s per point, {ROUNDS} rounds (medians)")
    print(f"  {'sequences':>9} {'sampling':<14} {'tokens/s':>9} {'ms/step':>8}")
    for (batch, name), runs in points.items():
        print(f"  {batch:9d} {name:<14} {statistics.median(r[0] for r in runs):9.1f} "
              f"{statistics.median(r[1] for r in runs):8.2f}")


if __name__ == "__main__":
    main()
