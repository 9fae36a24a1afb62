"""The engine's slot cache: sequences that join, leave and outgrow the buffers decode exactly as each would alone
in transformers' own `generate`."""

from __future__ import annotations

import threading

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from genlab.data.tokenize import train_tokenizer
from genlab.serving.engine import TextEngine, TextParams
from genlab.serving.kv_cache import MIN_COLUMNS, SlotCache


def tiny_lm():
    tokenizer = train_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz .,\n"], 0)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def alone(lm, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens of one prompt by transformers' generate (its own DynamicCache), end of text not allowed."""
    out = lm.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      pad_token_id=lm.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def test_joining_leaving_and_growing_rows_decode_as_each_sequence_alone():
    lm, tokenizer = tiny_lm()
    prompts = {"a": [5, 6], "b": list(range(3, 30)) * 2, "c": [7, 8, 9, 10], "d": [11], "e": [12, 13, 14]}
    lengths = {"a": 90, "b": 12, "c": 5, "d": 40, "e": 20}  # a outgrows the first buffer (MIN_COLUMNS)
    got: dict[str, list[int]] = {k: [] for k in prompts}
    done, ends = threading.Semaphore(0), []
    engine = TextEngine(lm, tokenizer, max_batch_size=4)

    def submit(name: str) -> None:
        def emit(event: tuple) -> None:
            if event[0] == "logprob":
                got[name].append(event[1])
                if name == "a" and len(got["a"]) == 3:  # b's prompt is longer than the window: it opens left
                    submit("b")
                if name == "a" and len(got["a"]) == 6:  # c leaves from the middle; d and e take the rows freed
                    submit("c"), submit("d"), submit("e")
            elif event[0] in ("done", "error"):
                ends.append(event[0] if event[0] == "done" else event[1])
                done.release()
        params = TextParams(max_tokens=lengths[name], min_tokens=lengths[name], temperature=0, logprobs=0)
        engine.submit(prompts[name], params, 0, emit)

    submit("a")
    for _ in prompts:
        assert done.acquire(timeout=60)
    engine.stop(0)
    assert ends == ["done"] * len(prompts), ends
    for name, prompt in prompts.items():
        assert got[name] == alone(lm, prompt, lengths[name]), name
    assert MIN_COLUMNS < len(prompts["a"]) + lengths["a"]


def test_a_row_whose_logits_go_nan_ends_with_an_error_and_the_row_taking_its_slot_decodes_as_alone():
    lm, tokenizer = tiny_lm()
    prompts = {"a": [5, 6, 7], "b": [8, 9], "c": [10, 11, 12, 13], "f": [14]}
    lengths = {"a": 20, "b": 20, "c": 20, "f": 8}
    expected = {k: alone(lm, prompts[k], lengths[k]) for k in prompts}
    used = {t for k in prompts for t in prompts[k] + expected[k]} | {tokenizer.eos_token_id}
    bad = next(t for t in range(3, len(tokenizer)) if t not in used)
    with torch.no_grad():  # a token whose embedding is NaN: a sequence that holds it goes NaN, no other does
        lm.model.embed_tokens.weight[bad] = float("nan")
    prompts["p"], lengths["p"] = [15, bad, 16], 20
    got: dict[str, list[int]] = {k: [] for k in prompts}
    ends: dict[str, tuple] = {}
    done = threading.Semaphore(0)
    engine = TextEngine(lm, tokenizer, max_batch_size=4)

    def submit(name: str) -> None:
        def emit(event: tuple) -> None:
            if event[0] == "logprob":
                got[name].append(event[1])
                if name == "a" and len(got["a"]) == 6:  # f takes p's row, its one-token prompt right of p's keys
                    submit("f")
            elif event[0] in ("done", "error"):
                ends[name] = event
                done.release()
        engine.submit(prompts[name], TextParams(max_tokens=lengths[name], min_tokens=lengths[name], temperature=0,
                                                logprobs=0), 0, emit)

    for name in "abcp":  # p last: the row it leaves is the one f takes
        submit(name)
    for _ in prompts:
        assert done.acquire(timeout=60)
    engine.stop(0)
    assert ends["p"] == ("error", "generation failed"), ends["p"]
    assert {k: ends[k][0] for k in "abcf"} == dict.fromkeys("abcf", "done")
    assert {k: got[k] for k in "abcf"} == expected


def test_the_buffers_move_or_grow_only_when_full_and_free_rows_are_reused():
    cache = SlotCache()
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    joined = type("Joined", (), {"layers": [type("L", (), {"keys": keys, "values": -keys})()]})()
    cache.admit(joined, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert cache.rows == 2 and cache.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    first = cache.keys[0]
    for _ in range(10):
        cache.open_column()
        cache.advance()
    assert cache.keys[0] is first, "columns are written in place while the buffer has room"
    assert cache.drop([0]) == [1] and cache.rows == 1 and cache.mask[0, :3].tolist() == [1, 1, 1]
    assert torch.equal(cache.keys[0][0, :, cache.start : cache.start + 3], keys[1]), "the last row took row 0"
    while cache.end < first.shape[2] * 3:
        cache.open_column()
        cache.advance()
    assert cache.keys[0].shape[2] >= cache.end - cache.start and cache.mask.sum() == cache.end - cache.start


def test_windows_that_reach_the_buffers_end_move_back_in_place_and_every_row_keeps_its_keys():
    cache, written, ids, poisoned = SlotCache(), {}, [], set()

    def admit(width: int, real: int) -> None:
        keys = torch.randn(1, 1, width, 2)
        ids.append(len(written))
        if ids[-1] % 4 == 3:  # a row whose model state went NaN: it must reach no other row, now or after it left
            poisoned.add(ids[-1])
            keys.fill_(float("nan"))
        layer = type("L", (), {"keys": keys, "values": -keys})()
        cache.admit(type("Joined", (), {"layers": [layer]})(), torch.tensor([[0] * (width - real) + [1] * real]))
        written[ids[-1]] = [keys[0, 0, width - real :]]

    admit(40, 40)
    admit(5, 5)
    buffer, moves, overlapped = cache.keys[0], 0, 0
    for step in range(300):
        end = cache.end
        cache.open_column()
        moves += cache.end < end
        new = torch.randn(cache.rows, 1, 1, 2)
        new[[row for row, i in enumerate(ids) if i in poisoned]] = float("nan")
        cache.layers[0].update(new, -new)  # as the model's attention writes a step's keys and values
        cache.advance()
        for row, i in enumerate(ids):
            written[i].append(new[row, 0])
        if step % 8 == 7:  # continuous batching: the oldest row leaves, a new one joins
            ids = [ids[j] for j in cache.drop([ids.index(min(ids))])]
            wide = cache.end < 30  # soon after a move: a prompt wider than `end` moves the window right, over itself
            admit(cache.end + 6 if wide else 3, 3)
            overlapped += wide
        for row, i in enumerate(ids):
            if i in poisoned:
                continue
            real, window = cache.mask[row].bool(), slice(cache.start, cache.end)
            assert torch.equal(cache.keys[0][row, 0, window][real], torch.cat(written[i])), step
            assert torch.equal(cache.values[0][row, 0, window][real], -torch.cat(written[i]))
            assert cache.keys[0][row, 0, window].isfinite().all() and cache.values[0][row, 0, window].isfinite().all()
    assert moves >= 3 and overlapped >= 2 and len(poisoned) >= 8, (moves, overlapped, poisoned)
    assert cache.keys[0] is buffer, "the window moved within its buffer, never reallocated"
