"""The text engine alone: what batching gains by model size, and what sampling costs with a real vocabulary.

Random-weight Llamas (built here: nothing is downloaded) decode in genlab's TextEngine on one thread, with 1 and
32 sequences of 64 tokens kept in flight, as the engine's process decodes them in `genlab serve`:
- by size: 4 x 192 (the shakespeare-char recipe's shape) to 8 x 768 (57 M parameters), a 256-token vocabulary;
  tokens/s at 1 and 32 sequences and their ratio, the bar `bench/serving.py` holds the server to. A small model's
  step at one sequence is mostly fixed cost (Python, kernel launches), which 32 rows share; a large one's is its
  weights read from memory at 1 row and its arithmetic at 32, so the ratio falls to the machine's FLOPs per
  byte of weights;
- by vocabulary: the recipe's shape with GPT-2's 50,257 tokens, plain temperature sampling, top_k 50 (a row's
  k logits taken by torch.topk) and top_p 0.9 (a row sorted whole).
Each point's rounds interleave; medians are printed. Figures only.

Usage: python bench/engine.py [SECONDS_PER_POINT] [ROUNDS]
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
from transformers.utils import logging as hf_logging

from genlab.serving.engine import TextEngine, TextParams

warnings.filterwarnings("ignore")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
SHAPES = ((4, 192), (6, 384), (8, 512), (8, 768))  # (layers, width); heads of 64
GPT2_VOCAB = 50_257
PLAIN = TextParams(max_tokens=64, min_tokens=64)


def model(layers: int, width: int, vocab: int) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    words.pre_tokenizer, words.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t0", unk_token="t0")
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=width * 8 // 3 // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=width // 64, num_key_value_heads=width // 64,
                         max_position_embeddings=256, tie_word_embeddings=True, eos_token_id=0, bos_token_id=0,
                         pad_token_id=0)
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


def by_size() -> None:
    print(f"by size: 256-token vocabulary, temperature 1, one thread, {SECONDS:g} s per point, {ROUNDS} rounds")
    print(f"  {'model':<20} {'1 seq tok/s':>11} {'32 seq tok/s':>12} {'32 / 1':>7}  each round")
    for layers, width in SHAPES:
        lm, tokenizer = model(layers, width, 256)
        rounds = [(decode(lm, tokenizer, 1, PLAIN)[0], decode(lm, tokenizer, 32, PLAIN)[0]) for _ in range(ROUNDS)]
        one, many = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        name = f"{layers} x {width} ({sum(p.numel() for p in lm.parameters()) / 1e6:.1f} M)"
        print(f"  {name:<20} {one:11.1f} {many:12.1f} {many / one:6.2f}x  "
              f"{', '.join(f'{b / a:.2f}' for a, b in rounds)}")


def by_vocabulary() -> None:
    lm, tokenizer = model(4, 192, GPT2_VOCAB)
    settings = {"temperature 1": PLAIN, "top_k 50": TextParams(max_tokens=64, min_tokens=64, top_k=50),
                "top_p 0.9": TextParams(max_tokens=64, min_tokens=64, top_p=0.9)}
    points = {(b, name): [] for b in (1, 32) for name in settings}
    for _ in range(ROUNDS):
        for batch, name in points:
            points[(batch, name)].append(decode(lm, tokenizer, batch, settings[name]))
    print(f"\nby vocabulary: 4 x 192 with {GPT2_VOCAB:,} tokens, one thread, {SECONDS:g} s per point, "
          f"{ROUNDS} rounds (medians)")
    print(f"  {'sequences':>9} {'sampling':<14} {'tokens/s':>9} {'ms/step':>8}")
    for (batch, name), runs in points.items():
        print(f"  {batch:9d} {name:<14} {statistics.median(r[0] for r in runs):9.1f} "
              f"{statistics.median(r[1] for r in runs):8.2f}")


def main() -> None:
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # saving and loading each model would print bars between the rows
    by_size()
    by_vocabulary()


if __name__ == "__main__":
    main()
