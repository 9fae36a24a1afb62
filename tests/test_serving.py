"""genlab serve: the OpenAI-compatible app with the official client, continuous batching, streaming,
keys and rate limits, request limits, filters, metrics and logs, and the Lambda handler."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import logging
import re
import shutil
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import genlab
from genlab.capabilities.text import ServedLM
from genlab.cli import app
from genlab.errors import GenlabError
from genlab.responsible.memorization import IMAGE_CHECK_FILE, INDEX_FILE, CopyIndex, ImageCopies
from genlab.serving import ServeConfig, serve_app
from genlab.serving.engine import TextEngine, TextParams

from .conftest import running

# the text engine in a thread of the test's process: tests of what the server does around the engine need not wait
# for an engine process to import torch. The default (a process) is what the cancellation, engine-process,
# lm-evaluation-harness and fuzz tests serve.
THREAD = {"engine": "thread"}


def _png_header(width: int, height: int) -> str:
    """A base64 PNG whose header promises `width` x `height` pixels: a decompression bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(bytes(4096)))  # the first rows only: decoding would want 432 MB
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + header + pixels + chunk(b"IEND", b"")).decode()


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_the_official_openai_client_does_everything_it_is_asked(runs):
    from openai import OpenAI

    app = serve_app([runs["lm"].path, runs["digits"].path], ServeConfig(**THREAD, names=["lm", "digits"]))
    with running(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"lm", "digits"}

        done = client.completions.create(model="lm", prompt="The import statement", max_tokens=12, seed=1)
        assert done.choices[0].text and done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 0
        again = client.completions.create(model="lm", prompt="The import statement", max_tokens=12, seed=1)
        assert again.choices[0].text == done.choices[0].text, "same seed, same text"

        chunks = list(client.completions.create(model="lm", prompt="The import statement", max_tokens=12, seed=1,
                                                stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
        assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens

        chat = client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=10, n=2, seed=3)
        assert len(chat.choices) == 2 and chat.choices[0].message.role == "assistant"
        streamed = client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hello"}],
                                                  max_tokens=10, seed=3, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == chat.choices[0].message.content

        response = client.responses.create(model="lm", input="Describe the for statement", max_output_tokens=10,
                                           extra_body={"seed": 1})  # unseeded, a tiny LM may end at once
        assert response.status == "completed" and response.output_text and response.usage.output_tokens > 0
        events = [e.type for e in client.responses.create(model="lm", input="Describe", max_output_tokens=8,
                                                          stream=True)]
        assert events[0] == "response.created" and events[-1] == "response.completed"
        assert "response.output_text.delta" in events

        images = client.images.generate(model="digits", prompt="", n=3, response_format="b64_json",
                                        extra_body={"seed": 4, "steps": 5})
        first = png(images.data[0].b64_json)
        assert len(images.data) == 3 and first.size == (8, 8)
        repeat = client.images.generate(model="digits", prompt="", n=1, extra_body={"seed": 4, "steps": 5})
        assert repeat.data[0].b64_json == images.data[0].b64_json, "a seeded image is the same alone or in a batch"


def test_streams_are_server_sent_events_that_end_with_done(runs):
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"]))
    with running(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json={"model": "lm", "prompt": "x", "max_tokens": 5,
                                                                  "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_engine_process_drops_a_client_that_left_and_a_killed_one_fails_its_requests_and_is_replaced(runs):
    body = {"model": "lm", "prompt": ["The import", "def"], "max_tokens": 12, "temperature": 0.9, "seed": 5,
            "logprobs": 2}
    with client_for(runs) as client:
        alone = client.post("/v1/completions", json=body).json()
    app = serve_app([runs["lm"].path], ServeConfig(names=["lm"]))
    engine = app.state.server.models["lm"].engine
    assert app.state.server.models["lm"].model.lm.device.type == "meta", "the server's process keeps no copy"
    assert engine.load == "genlab.models.hf:causal_lm_folder", "its process reads the folder with transformers alone"
    long = {"model": "lm", "prompt": "x", "max_tokens": 90, "min_tokens": 90}
    with running(app) as url, concurrent.futures.ThreadPoolExecutor(2) as pool:
        with httpx.stream("POST", f"{url}/v1/completions", json={**long, "stream": True}) as r:
            assert r.status_code == 200  # and gone once the headers are in: decoding 90 tokens takes longer
        deadline = time.monotonic() + 10
        while (engine.depth or engine.remote_depth or not engine.steps) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.depth == 0 and engine.remote_depth == 0, "the sequence left the batch when its client went away"
        assert engine.steps < 90, f"{engine.steps} steps: it was decoded to the end"

        remote = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
        assert [c["text"] for c in remote["choices"]] == [c["text"] for c in alone["choices"]]
        here, there = alone["choices"][1]["logprobs"], remote["choices"][1]["logprobs"]
        assert there["tokens"] == here["tokens"] and there["text_offset"] == here["text_offset"]
        # the child decodes on fewer threads than this process: sums in another order
        assert there["token_logprobs"] == pytest.approx(here["token_logprobs"], abs=1e-4)
        in_flight = pool.submit(httpx.post, f"{url}/v1/completions", json=long, timeout=60)
        while not engine.steps or not engine.depth:  # it is decoding
            time.sleep(0.005)
        engine.kill()  # as the kernel's OOM killer would
        failed = in_flight.result()
        assert failed.status_code == 503 and "restarting" in failed.text and int(failed.headers["retry-after"]) >= 1
        refused = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert httpx.get(f"{url}/ready").status_code == 503, "not ready while the engine is replaced"
        assert httpx.get(f"{url}/health").status_code == 200, "healthy: it heals by itself"
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        healed = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
        assert engine.started == 2 and [c["text"] for c in healed["choices"]] == [c["text"] for c in alone["choices"]]
        engine.restarts = 0  # a child that cannot be started again: the server says so, and a probe restarts it
        engine.kill()
        while engine.alive or not engine.failed:
            time.sleep(0.01)
        assert httpx.get(f"{url}/health").json() == {"status": "unhealthy", "models_down": 1}
        gone = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert gone.status_code == 503 and "could not be restarted" in gone.text


def test_continuous_batching_lets_a_short_request_finish_while_a_long_one_runs(runs):
    served = ServedLM("lm", runs["lm"].model, ServeConfig(max_wait_ms=0), None)
    finished: dict[str, float] = {}
    events: dict[str, list] = {"long": [], "short": []}

    def submit(name: str, tokens: int, prompt: str) -> None:
        def emit(event):
            events[name].append(event)
            if event[0] == "done":
                finished[name] = time.perf_counter()
        params = TextParams(max_tokens=tokens, temperature=1.0)
        served.engine.submit(served.encode(prompt), params, 0, emit)

    try:
        submit("long", 80, "x")
        while not events["long"]:  # the long one is decoding
            time.sleep(0.001)
        submit("short", 3, "The import statement")
        while len(finished) < 2:
            time.sleep(0.01)
    finally:
        served.stop(5)
    assert finished["short"] < finished["long"], "the short request left the batch first"
    done = events["short"][-1]
    assert done[0] == "done" and done[3] <= 3 and done[4] == 2, "it was decoded in the long one's batch"


def test_a_seeded_request_gives_the_same_text_alone_and_in_a_crowd(runs):
    served = ServedLM("lm", runs["lm"].model, ServeConfig(max_wait_ms=20), None)

    def run(requests: list[tuple[str, int, float, int, float]]) -> list[str]:
        texts, done = [[] for _ in requests], threading.Semaphore(0)

        def emitter(i):
            def emit(event):
                if event[0] == "delta":
                    texts[i].append(event[1])
                elif event[0] == "done":
                    done.release()
            return emit
        for i, (prompt, seed, temperature, top_k, top_p) in enumerate(requests):
            served.engine.submit(served.encode(prompt), TextParams(max_tokens=20, temperature=temperature, top_k=top_k,
                                                                   top_p=top_p), seed, emitter(i))
        for _ in requests:
            done.acquire()
        return ["".join(t) for t in texts]

    cut, plain = ("The import statement", 7, 0.9, 20, 0.9), ("A module", 4, 1.0, 0, 1.0)  # sorted, unsorted draws
    try:
        alone = [run([cut])[0], run([plain])[0]]
        crowd = run([("x", 1, 1.0, 0, 1.0), cut, ("A longer prompt about modules", 2, 0.0, 0, 1.0), plain,
                     ("def", 3, 1.5, 5, 1.0)])
    finally:
        served.stop(5)
    assert [crowd[1], crowd[3]] == alone and len(set(crowd)) == 5


def test_each_row_draws_from_its_own_distribution_sorted_only_when_it_cuts_its_tail(monkeypatch):
    """A row without top_k or top_p draws in vocabulary order (no sort: 115 ms a step for 32 rows of GPT-2's
    vocabulary), one with them from its own head, sorted; either way the frequencies are the softmax's."""
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])

    def pick(params: list[TextParams]) -> list[int]:
        seqs = [SimpleNamespace(ids=[1], prompt_len=1, generated=1, params=p,
                                generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
        return TextEngine._pick(SimpleNamespace(eos=0), seqs, probs.log().expand(len(params), -1).clone())

    def frequencies(params: TextParams, n: int = 6000) -> torch.Tensor:
        return torch.bincount(torch.tensor(pick([params] * n)), minlength=len(probs)) / n

    torch.testing.assert_close(frequencies(TextParams(temperature=1.0)), probs, atol=0.02, rtol=0)
    torch.testing.assert_close(frequencies(TextParams(temperature=1.0, top_k=2)),
                               torch.tensor([0, 0.4, 0, 0.3, 0]) / 0.7, atol=0.02, rtol=0)
    torch.testing.assert_close(frequencies(TextParams(temperature=1.0, top_p=0.75)),  # 0.4 + 0.3 fall short
                               torch.tensor([0, 0.4, 0, 0.3, 0.15]) / 0.85, atol=0.02, rtol=0)
    sharp = frequencies(TextParams(temperature=0.25))
    assert sharp[1] > 0.7 and sharp[2] < 0.01, "a low temperature sharpens the plain draw too"
    heads, topk = [], torch.Tensor.topk

    def counted(t, k, *args, **kwargs):
        heads.append((t.shape[0], k))
        return topk(t, k, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", counted)
    monkeypatch.setattr(torch.Tensor, "sort", lambda *a, **k: pytest.fail("no row is sorted whole by sort"))
    pick([TextParams(temperature=1.0)] * 6 + [TextParams(temperature=1.0, top_p=0.5),
                                              TextParams(temperature=1.0, top_k=3), TextParams(temperature=0, top_k=3)])
    assert sorted(heads) == [(1, 3), (1, 5)], "a top_k row takes its k, a top_p row its whole row; greedy ones none"


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (7, 1.0), (50, 1.0), (999, 1.0), (50, 0.6), (0, 0.9),
                                          (5000, 0.8)])
def test_a_row_that_cuts_its_tail_draws_what_sorting_its_whole_row_draws(top_k, top_p):
    """Taking a row's top k (torch.topk) rather than sorting all of it changes no draw: the same token for the same
    seed as the whole row sorted, cut at k and top_p, would give, alone or beside rows with other cuts."""
    vocab, n = 1000, 48
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(top_k)) * 3
    params = [TextParams(temperature=0.9, top_k=top_k, top_p=top_p) if i % 3 else
              TextParams(temperature=0.9, top_k=3 + i % 5) for i in range(n)]  # a crowd of other widths
    seqs = [SimpleNamespace(ids=[1], prompt_len=1, generated=1, params=p, generator=torch.Generator().manual_seed(i))
            for i, p in enumerate(params)]
    drawn = TextEngine._pick(SimpleNamespace(eos=0), seqs, logits.clone())
    for i, p in enumerate(params):
        ordered, order = (logits[i] / 0.9).sort(descending=True)
        probs = F.softmax(ordered.masked_fill(torch.arange(vocab) >= (p.top_k or vocab), float("-inf")), dim=0)
        probs = probs.masked_fill(probs.cumsum(0) - probs >= p.top_p, 0.0)
        cumulative, u = probs.cumsum(0), torch.rand((), generator=torch.Generator().manual_seed(i))
        assert drawn[i] == int(order[min(int((cumulative < u * cumulative[-1]).sum()), vocab - 1)]), (i, p)
    # a bf16 model's logits tie often, and equal logits may come out of topk in another order than a sort's: a
    # row's head is still its own, so its token alone is its token in the crowd
    tied = logits.bfloat16().float()
    crowd = TextEngine._pick(SimpleNamespace(eos=0), seqs, tied.clone(), torch.rand(n, 1, generator=torch.Generator()
                                                                                     .manual_seed(7)))
    alone = [TextEngine._pick(SimpleNamespace(eos=0), [seq], tied[i : i + 1].clone(), torch.rand(
        n, 1, generator=torch.Generator().manual_seed(7))[i : i + 1])[0] for i, seq in enumerate(seqs)]
    assert crowd == alone


def test_a_penalty_that_overflows_a_logit_draws_among_the_overflowed_and_a_nan_row_fails_alone():
    """A tiny repetition_penalty divides a positive logit past the largest float: its softmax would be NaN."""
    logits = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.5], [1.0, 2.0, -1.0, 3.0, 0.5]])
    seqs = [SimpleNamespace(ids=[0, 1, 2], prompt_len=2, generated=1, generator=torch.Generator().manual_seed(i),
                            params=TextParams(temperature=t, repetition_penalty=1e-142))
            for i, t in enumerate((0.7, 0))]
    drawn = [TextEngine._pick(SimpleNamespace(eos=4), seqs, logits.clone()) for _ in range(30)]
    # tokens 0 and 1 were seen and their logits are positive: both overflow, and are drawn alike; 3 is not drawn
    assert {d[0] for d in drawn} == {0, 1} and {d[1] for d in drawn} == {0}, drawn
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TextEngine._pick(SimpleNamespace(eos=4), seqs, logits.clone())
    assert TextEngine._pick(SimpleNamespace(eos=4), seqs[:1], logits[:1].clone())[0] in (0, 1)


def client_for(runs, **config) -> TestClient:
    cfg = ServeConfig(names=["lm", "digits"], **{**THREAD, **config})
    return TestClient(serve_app([runs["lm"].path, runs["digits"].path], cfg), raise_server_exceptions=False)


def test_keys_are_required_when_configured_and_health_stays_open(runs, monkeypatch):
    monkeypatch.setenv("GENLAB_API_KEYS", "env-key")
    with client_for(runs, api_keys=["k1"]) as client:
        body = {"model": "lm", "prompt": "x", "max_tokens": 2}
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 401
        assert client.get("/ready", headers={"Authorization": "Bearer k1"}).json()["status"] == "ready"
        missing = client.post("/v1/completions", json=body)
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
        assert client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        for key in ("k1", "env-key"):
            assert client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}).is_success
        assert client.get("/v1/models").status_code == 401


def test_rate_limits_answer_429_with_retry_after_per_key(runs):
    limits = {"requests_per_minute": 2}
    with client_for(runs, api_keys=["a", "b"], rate_limit=limits) as client:
        body = {"model": "lm", "prompt": "x", "max_tokens": 2}
        a, b = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}
        assert [client.post("/v1/completions", json=body, headers=a).status_code for _ in range(3)] == [200, 200, 429]
        limited = client.post("/v1/completions", json=body, headers=a)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert client.post("/v1/completions", json=body, headers=b).status_code == 200, "b has a budget of its own"
    with client_for(runs, rate_limit={"tokens_per_minute": 20}) as client:  # max_tokens reserved on admission
        never = client.post("/v1/completions", json={**body, "max_tokens": 50})
        assert never.status_code == 429 and "max_tokens: 50 tokens asked for, more than the token rate limit" in \
            never.json()["error"]["message"]
        fixed = {**body, "max_tokens": 8, "min_tokens": 8}
        assert client.post("/v1/completions", json=fixed).is_success and client.post("/v1/completions",
                                                                                      json=fixed).is_success
        spent = client.post("/v1/completions", json=fixed)
        assert spent.status_code == 429 and "token rate limit of 20 per minute" in spent.json()["error"]["message"]
        assert client.post("/v1/completions", json={**body, "max_tokens": 2}).is_success, "what is left still serves"


def test_a_stream_holds_its_reservation_and_a_client_that_leaves_pays_only_what_it_got(runs):
    # a lone request waits up to max_wait_ms for company before it decodes: time to send a second one
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"], max_wait_ms=1500,
                                                   rate_limit={"tokens_per_minute": 100}))
    guard = app.state.server.guard
    body = {"model": "lm", "prompt": "The ", "max_tokens": 60, "min_tokens": 60, "stream": True}
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as held:  # admitted: 60 tokens reserved
            second = client.post("/v1/completions", json={**body, "stream": False})
            assert second.status_code == 429, "two full reservations do not fit in 100 tokens"
            lines = held.iter_lines()
            got = [next(lines) for _ in range(40)]  # 20 tokens (an event and a blank line each), then it leaves
        time.sleep(0.3)  # the engine drops the sequence at its next step and the stream's end settles it
        bucket = guard._bucket("address:127.0.0.1", "tokens")
        bucket.refill()
        assert len(got) == 40 and bucket.level < 90, f"a client that left is charged what it got ({bucket.level} left)"
        assert client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 5, "min_tokens": 0}
                           ).is_success


def test_settling_refunds_what_was_reserved_and_not_generated_once():
    from types import SimpleNamespace

    from genlab.serving.filters import OutputFilter
    from genlab.serving.generation import Choice, Generation
    from genlab.serving.guard import Guard

    guard = Guard(ServeConfig(rate_limit={"tokens_per_minute": 6000}))  # 100 a second: the test's time is noise
    guard.reserve("x", 600)
    guard.take_share("x", "lm", 2, 256)
    gen = Generation(SimpleNamespace(name="lm"), [Choice(0, OutputFilter([])), Choice(1, OutputFilter([]))],
                     guard=guard, identity="x", reserved=600)
    gen.choices[0].finish, gen.choices[0].tokens = "stop", 70  # finished early
    gen.choices[1].handle = SimpleNamespace(generated=40, cancelled=False)  # its client left after 40
    gen.cancel()
    gen.cancel()
    bucket = guard._bucket("x", "tokens")
    assert bucket.level == pytest.approx(6000 - 110, abs=5) and gen.choices[1].handle.cancelled
    assert guard._queued == {}, "its places in the queue are given back, once"


def test_one_key_cannot_hold_more_than_its_share_of_requests_in_flight(runs):
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"], api_keys=["a", "b"], max_wait_ms=1500,
                                                   rate_limit={"concurrent_requests": 1}))
    body = {"model": "lm", "prompt": "The ", "max_tokens": 60, "min_tokens": 60, "stream": True}
    a, b = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body, headers=a):  # in flight until it is sent whole
            again = client.post("/v1/completions", json={**body, "max_tokens": 2}, headers=a)
            assert again.status_code == 429 and "concurrency limit of 1" in again.text
            assert client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}, headers=b
                               ).is_success, "another key is not held back"
        time.sleep(0.2)
        assert client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2}, headers=a).is_success


def test_one_sequence_whose_sampling_fails_leaves_its_batch_neighbours_to_finish(runs):
    from genlab.serving.app import load_served

    served = load_served(runs["lm"].path, ServeConfig(**THREAD, max_wait_ms=200))

    def batch(rows: list[int]) -> dict[int, list]:
        events: dict[int, list] = {i: [] for i in rows}
        for i in rows:  # a negative top_k fails torch.topk: the schema refuses it, the engine must survive it
            params = TextParams(max_tokens=6, temperature=1.0, top_k=-1 if i == 2 else 20, top_p=0.9)
            served.engine.submit(served.encode("The "), params, i, events[i].append)
        deadline = time.monotonic() + 30
        while any(not e or e[-1][0] not in ("done", "error") for e in events.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return events

    try:
        events, without = batch([0, 1, 2, 3]), batch([0, 1, 3])
    finally:
        served.stop(1)
    assert events[2][-1] == ("error", "generation failed"), "the client is told, without the engine's internals"
    assert [events[i][-1][0] for i in (0, 1, 3)] == ["done"] * 3 and all(events[i][-1][3] == 6 for i in (0, 1, 3))
    assert events[0][-1][4] == 4, "the four were decoded as one batch"
    text = {i: "".join(e[1] for e in events[i] if e[0] == "delta") for i in (0, 1, 3)}
    assert text == {i: "".join(e[1] for e in without[i] if e[0] == "delta") for i in (0, 1, 3)}, \
        "each neighbour drew the tokens it draws without the failing row"


def test_keys_compare_as_bytes_and_ops_endpoints_need_one_unless_public(runs, monkeypatch):
    monkeypatch.setenv("GENLAB_API_KEYS", "sekret, other")
    body = {"model": "lm", "prompt": "x", "max_tokens": 2}
    with client_for(runs) as client:
        assert client.post("/v1/completions", json=body, headers={"Authorization": "Bearer other"}).is_success
        odd = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer s\u00e9kret".encode()})
        assert odd.status_code == 401, "a non-ASCII key is a wrong key, not a crash"
        assert client.get("/health").status_code == 200
        for path in ("/ready", "/metrics", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer sekret"}).status_code == 200, path
    with client_for(runs, public=["health", "ready", "docs"]) as client:
        assert client.get("/ready").status_code == 200 and client.get("/openapi.json").status_code == 200
        assert client.get("/metrics").status_code == 401


@pytest.mark.parametrize(("body", "status", "names"), [
    ({"model": "lm", "prompt": "x", "max_tokens": 500}, 400, "max_tokens"),
    ({"model": "lm", "prompt": "x", "n": 50}, 400, "n:"),
    ({"model": "lm", "prompt": "word " * 3000}, 400, "prompt"),
    ({"model": "lm", "prompt": "x", "temperature": 500}, 400, "temperature"),  # the family's bound, not OpenAI's 2
    ({"model": "lm", "prompt": "x", "temperature": "hot"}, 422, "temperature"),
    ({"model": "lm"}, 422, "prompt"),
    ({"model": "nope", "prompt": "x"}, 404, "'nope' is not served here"),
    ({"model": "digits", "prompt": "x"}, 400, "does not serve /v1/completions"),
    ({"model": "lm", "prompt": "x", "logprobs": 6}, 422, "logprobs"),
    ({"model": "lm", "prompt": "x", "frequency_penalty": 3}, 400, "frequency_penalty"),
    ({"model": "lm", "prompt": "x", "top_k": 2**64}, 400, "top_k"),  # past int64, it once failed the whole batch
    ({"model": "lm", "prompt": "x", "min_tokens": 2**63}, 400, "min_tokens"),  # vLLM's name for min_new_tokens
    ({"model": "lm", "prompt": "x", "num_beams": 2}, 200, ""),  # another family's option: not this model's, ignored
])
def test_bad_requests_get_an_error_that_names_the_field(runs, body, status, names):
    with client_for(runs, limits={"max_prompt_chars": 10_000}) as client:
        r = client.post("/v1/completions", json=body)
    assert r.status_code == status and (status == 200 or names in r.json()["error"]["message"]), r.json()


def test_image_and_body_limits_and_malformed_json(runs):
    with client_for(runs, limits={"max_body_bytes": 2048}) as client:
        url = "/v1/images/generations"
        assert "size: this model draws 8x8" in client.post(url, json={"model": "digits", "size": "64x64"}).text
        assert "n: 20 images" in client.post(url, json={"model": "digits", "n": 20}).text
        assert "truncation: a diffusion model" in client.post(url, json={"model": "digits", "truncation": 1}).text
        assert "sampler: Input should be 'ddpm', 'ddim' or 'dpm-solver' (got 'magic')" in client.post(
            url, json={"model": "digits", "sampler": "magic"}).text
        assert "steps: Input should be less than or equal to 10000" in client.post(
            url, json={"model": "digits", "steps": 2**70}).text, "a bound from the family's Sampling class"
        big = client.post("/v1/completions", json={"model": "lm", "prompt": "x" * 5000})
        assert big.status_code == 413 and "body" in big.json()["error"]["message"]
        broken = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "error" in broken.json()


def test_a_samplers_cost_is_the_familys_to_say_and_the_models_own_options_are_checked_at_start(runs, tmp_path):
    folder = shutil.copytree(runs["digits"].paths.model, tmp_path / "plain")
    meta = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**meta, "sampling": {}}))  # a run that chose no options
    with TestClient(serve_app([folder], ServeConfig(**THREAD))) as client:
        url = "/v1/images/generations"
        assert client.post(url, json={"model": "plain", "seed": 1}).status_code == 200  # dpm-solver's 20 steps
        for costly in ({"sampler": "ddpm"}, {"steps": 1000}):  # ddpm with no steps runs every training timestep
            refused = client.post(url, json={"model": "plain", **costly})
            assert refused.status_code == 400 and "steps: these options run 1000 sampler steps; the limit is 250" \
                in refused.json()["error"]["message"], costly
    (folder / "genlab.json").write_text(json.dumps({**meta, "sampling": {"sampler": "ddpm"}}))
    with pytest.raises(GenlabError, match="its own sampling options .* run 1000 sampler steps, past .* 250"):
        serve_app([folder], ServeConfig(**THREAD))


def test_a_requests_lengths_are_read_in_one_order_and_a_null_option_is_not_given(runs):
    chat = {"model": "lm", "messages": [{"role": "user", "content": "x"}], "seed": 0}
    with client_for(runs) as client:
        both = client.post("/v1/chat/completions", json={**chat, "max_tokens": 2, "max_completion_tokens": 10**7})
        assert both.status_code == 400 and both.json()["error"]["message"].startswith(
            "max_completion_tokens: 10000000 new tokens; the limit is 4096"), "the field that set it is named"
        short = client.post("/v1/chat/completions", json={**chat, "max_tokens": 10**7, "max_completion_tokens": 2})
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] <= 2
        url, body = "/v1/images/generations", {"model": "digits", "seed": 3}
        nulls = client.post(url, json={**body, "steps": None, "guidance_scale": None})
        assert nulls.json()["data"] == client.post(url, json=body).json()["data"], "null is the model's own option"


def test_one_clients_bad_value_never_reaches_another_clients_batch(runs):
    app = serve_app([runs["digits"].path], ServeConfig(**THREAD, names=["digits"], max_wait_ms=200))
    url, body = "/v1/images/generations", {"model": "digits", "seed": 7}

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            asks = [client.post(url, json={**body, "steps": 5}), client.post(url, json={**body, "steps": "5"}),
                    client.post(url, json={**body, "steps": 5.0}), client.post(url, json={**body, "steps": "five"}),
                    client.post(url, json={**body, "guidance_scale": [1]}), client.post(url, json={**body, "steps": 5})]
            return await asyncio.gather(*asks)

    answers = asyncio.run(together())
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 400, 200], [a.text for a in answers]
    assert "steps: Input should be a valid integer" in answers[3].text and "guidance_scale" in answers[4].text
    images = {a.json()["data"][0]["b64_json"] for i, a in enumerate(answers) if i in (0, 1, 2, 5)}
    assert len(images) == 1, "5, '5' and 5.0 are one typed value: the same image, drawn in the same batch"
    assert 'genlab_batch_size_count{model="digits"} 1.0' in app.state.server.metrics.render().decode()


def test_cors_origins_come_from_the_config(runs):
    with client_for(runs, cors_origins=["https://app.example.com"]) as client:
        allowed = client.options("/v1/completions", headers={"Origin": "https://app.example.com",
                                                             "Access-Control-Request-Method": "POST"})
        other = client.get("/health", headers={"Origin": "https://evil.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in other.headers


def test_a_full_queue_answers_503_with_retry_after(runs):
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"], max_queue=2, max_batch_size=1,
                                                   rate_limit={"queue_share": 1.0}))  # one client may fill it

    async def flood():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            body = {"model": "lm", "prompt": "x", "max_tokens": 40, "temperature": 1.0}
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(8)))

    answers = asyncio.run(flood())
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and "queue is full" in busy.json()["error"]["message"]
    assert app.state.server.guard._queued == {}, "a request the queue refused gives its places back"


def test_filters_refuse_or_replace_blocked_terms_and_are_counted(runs):
    with client_for(runs) as client:
        body = {"model": "lm", "prompt": "The ", "max_tokens": 40, "min_tokens": 40, "temperature": 0.7, "seed": 0}
        text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    word = max(re.findall(r"\b[A-Za-z]{2,}\b", text), key=len)
    with client_for(runs, filters=[{"terms": [word.upper()], "action": "refuse"}]) as client:
        refused = client.post("/v1/completions", json=body).json()["choices"][0]
        metrics = client.get("/metrics").text
    assert refused["text"] == "" and refused["finish_reason"] == "content_filter"
    assert refused["genlab_filter"]["reason"] == "the output contains a blocked term"
    assert 'genlab_filtered_outputs_total{action="refuse",filter="blocklist",model="lm"} 1.0' in metrics
    with client_for(runs, filters=[{"terms": [word], "action": "replace", "replacement": "***"}]) as client:
        replaced = client.post("/v1/completions", json=body).json()["choices"][0]
        streamed = client.post("/v1/completions", json={**body, "stream": True}).text
    assert word not in replaced["text"] and "***" in replaced["text"]
    pieces = [json.loads(line[6:])["choices"][0]["text"] for line in streamed.splitlines()
              if line.startswith("data: {")]
    assert "".join(pieces) == replaced["text"], "a stream is filtered as the whole text is"
    with client_for(runs, filters=[{"type": "pii", "action": "redact"}]) as client:  # text with no personal data
        kept = client.post("/v1/completions", json=body).json()["choices"][0]
        streamed = client.post("/v1/completions", json={**body, "stream": True}).text
    pieces = [json.loads(line[6:])["choices"][0]["text"] for line in streamed.splitlines()
              if line.startswith("data: {")]
    assert kept["text"] == text == "".join(pieces) and kept["finish_reason"] == "length"


def test_the_memorized_filter_redacts_copies_of_the_served_models_training_text(runs, tmp_path):
    body = {"model": "lm", "prompt": "The ", "max_tokens": 60, "min_tokens": 60, "temperature": 0.7, "seed": 0}
    with client_for(runs) as client:
        text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    run = tmp_path / "lm"
    shutil.copytree(runs["lm"].path, run)  # the same model, as if its training text held this very output
    CopyIndex.build(["<" + text[5:] + ">"]).save(run / "model")
    memorized = ServeConfig(**THREAD, names=["lm"], filters=[{"type": "memorized", "action": "redact"}])
    with TestClient(serve_app([run], memorized)) as client:
        whole = client.post("/v1/completions", json=body).json()["choices"][0]
        streamed = client.post("/v1/completions", json={**body, "stream": True}).text
    pieces = [json.loads(line[6:])["choices"][0]["text"] for line in streamed.splitlines()
              if line.startswith("data: {")]
    assert whole["text"] == text[:5] + "[MEMORIZED]" == "".join(pieces)
    assert whole["genlab_filter"]["reason"].startswith("text copied from training redacted")
    (run / "model" / INDEX_FILE).unlink()
    with pytest.raises(GenlabError, match="the memorized filter needs the training-text index"):
        serve_app([run], memorized)


def test_the_memorized_filter_withholds_or_flags_images_nearer_a_training_image_than_held_out_ones(runs, tmp_path):
    run = tmp_path / "digits"
    shutil.copytree(runs["digits"].path, run)
    (run / "model" / IMAGE_CHECK_FILE).unlink(missing_ok=True)
    memorized = [{"type": "memorized", "action": "refuse"}]
    with pytest.raises(GenlabError, match="evaluate the run first"):
        serve_app([run], ServeConfig(names=["digits"], filters=memorized))
    genlab.evaluate(genlab.Run(run))  # keeps the copy check: training features, radius, feature network
    check = ImageCopies.load(run / "model")
    assert check.radius > 0 and len(check.train) > 1000
    # genlab filter on a folder of images: training images are copies, noise is not
    from sklearn.datasets import load_digits

    folder = tmp_path / "made"
    folder.mkdir()
    for i, image in enumerate(load_digits().images[:3]):
        Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((8, 8)).save(folder / f"train{i}.png")
    noise = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    for i, image in enumerate(noise):
        Image.fromarray(image).save(folder / f"noise{i}.png")
    listed = CliRunner().invoke(app, ["filter", str(folder), "--model", str(run), "--action", "redact", "--out",
                                      str(tmp_path / "kept")])
    assert listed.exit_code == 0 and "3 of 6 image(s)" in listed.output, listed.output
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["noise0.png", "noise1.png", "noise2.png"]
    assert CliRunner().invoke(app, ["filter", str(folder), "--model", str(run), "--action", "refuse"]).exit_code == 3
    body = {"model": "digits", "prompt": "", "n": 2, "seed": 0}
    for radius, action, kept, copied in ((0.0, "refuse", 2, []), (1e9, "refuse", 0, [0, 1]), (1e9, "flag", 2, [0, 1])):
        ImageCopies(check.train, radius, net=check.net).save(run / "model")  # nothing, or everything, is a copy
        server = serve_app([run], ServeConfig(names=["digits"], filters=[{"type": "memorized", "action": action}]))
        with TestClient(server) as client:
            answer = client.post("/v1/images/generations", json=body).json()
            metrics = client.get("/metrics").text
        assert len(answer["data"]) == kept and answer.get("genlab_filter", {}).get("images", []) == copied
        if copied:
            assert answer["genlab_filter"]["action"] == action
            counted = f'genlab_filtered_outputs_total{{action="{action}",filter="memorized",model="digits"}} 2.0'
            assert counted in metrics


def test_metrics_and_one_json_log_line_per_request(runs, caplog):
    with client_for(runs) as client, caplog.at_level(logging.INFO, logger="genlab.serve"):
        client.post("/v1/completions", json={"model": "lm", "prompt": "x", "max_tokens": 3},
                    headers={"X-Request-ID": "req-42"})
        client.post("/v1/images/generations", json={"model": "digits", "n": 2, "steps": 3})
        client.post("/v1/completions", json={"model": "lm"})
        text = client.get("/metrics").text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "genlab.serve"]
    first = lines[0]
    assert first["id"] == "req-42" and first["model"] == "lm" and first["route"] == "/v1/completions"
    assert first["status"] == 200 and first["tokens"] >= 1 and first["batch_size"] >= 1 and first["latency_ms"] > 0
    assert lines[1]["batch_size"] == 2 and lines[2]["status"] == 422
    assert 'genlab_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'genlab_requests_total{route="/v1/completions",status="422"} 1.0' in text
    assert 'genlab_images_generated_total{model="digits"} 2.0' in text
    assert "genlab_batch_size_bucket" in text and 'genlab_queue_depth{model="lm"}' in text


def test_the_lambda_handler_answers_an_api_gateway_v2_event(runs, monkeypatch):
    import genlab.serving.aws as aws

    monkeypatch.setenv("GENLAB_MODELS", str(runs["lm"].path))
    monkeypatch.setattr(aws, "_handler", None)
    name = runs["lm"].config.name  # no names in the config: a run is served under its own name
    body = json.dumps({"model": name, "prompt": "The ", "max_tokens": 4, "seed": 0})
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": "/v1/completions", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {"accountId": "123", "apiId": "abc", "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
                           "http": {"method": "POST", "path": "/v1/completions", "protocol": "HTTP/1.1",
                                    "sourceIp": "10.0.0.1", "userAgent": "test"},
                           "requestId": "r1", "routeKey": "$default", "stage": "$default", "time": "now",
                           "timeEpoch": 0},
        "body": body, "isBase64Encoded": False,
    }
    answer = aws.lambda_handler(event, None)
    assert answer["statusCode"] == 200, answer
    choice = json.loads(answer["body"])["choices"][0]
    usage = json.loads(answer["body"])["usage"]
    assert choice["finish_reason"] in ("stop", "length") and 1 <= usage["completion_tokens"] <= 4
    missing = aws.lambda_handler({**event, "rawPath": "/v1/models", "requestContext": {
        **event["requestContext"], "http": {**event["requestContext"]["http"], "method": "GET",
                                            "path": "/v1/models"}}, "body": None}, None)
    assert json.loads(missing["body"])["data"][0]["id"] == name


def test_serving_refuses_what_is_not_a_model_folder_or_holds_pickles(runs, tmp_path):
    from genlab.errors import GenlabError

    with pytest.raises(GenlabError, match="neither a run directory nor a genlab model folder"):
        serve_app([tmp_path])
    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(runs["lm"].paths.model, folder)
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(GenlabError, match="pickled weights"):
        serve_app([folder])
    with pytest.raises(GenlabError, match="a second model named"):
        serve_app([runs["lm"].path, runs["lm"].path])


def test_each_family_gets_its_routes(tmp_path_factory):
    from .conftest import GAN_TINY, SR_TINY, TAB_TINY

    root = tmp_path_factory.mktemp("families")
    few = ["train.max_steps=4", "train.val_every=4", "train.checkpoint_every=4"]
    gan = genlab.fit(None, overrides=[*GAN_TINY, *few], out=root / "gan")
    sr = genlab.fit(None, overrides=[*SR_TINY, *few], out=root / "sr")
    table = genlab.fit(None, overrides=[*TAB_TINY, "data.source=wine", *few], out=root / "table")
    app = serve_app([gan.path, sr.path, table.path], ServeConfig(names=["gan", "sr", "table"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        one = client.post("/v1/images/generations", json={"model": "gan", "n": 2, "seed": 1, "truncation": 0.5})
        assert [png(d["b64_json"]).size for d in one.json()["data"]] == [(8, 8), (8, 8)]
        assert "label:" in client.post("/v1/images/generations", json={"model": "gan", "label": 42}).text

        buffer = io.BytesIO()
        Image.new("RGB", (20, 12), (200, 30, 30)).save(buffer, format="PNG")
        up = client.post("/v1/images/upscale", json={"model": "sr", "images": [base64.b64encode(
            buffer.getvalue()).decode()]})
        assert png(up.json()["data"][0]["b64_json"]).size == (40, 24)
        bad = client.post("/v1/images/upscale", json={"model": "sr", "images": ["aGVsbG8="]})
        assert bad.status_code == 400 and "images[0]: not a base64-encoded PNG, JPEG or WebP" in bad.text
        bomb = _png_header(12_000, 12_000)  # a header that promises 144 MP, and no pixels to decode
        refused = client.post("/v1/images/upscale", json={"model": "sr", "images": [bomb]})
        assert refused.status_code == 400 and "images[0]: 12000x12000 pixels" in refused.text, "checked before decoding"
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="BMP")
        bmp = client.post("/v1/images/upscale", json={"model": "sr", "images": [base64.b64encode(
            buffer.getvalue()).decode()]})
        assert bmp.status_code == 400 and "not a base64-encoded PNG, JPEG or WebP" in bmp.text
        buffer = io.BytesIO()
        Image.new("RGB", (1500, 10)).save(buffer, format="PNG")
        huge = client.post("/v1/images/upscale", json={"model": "sr", "images": [base64.b64encode(
            buffer.getvalue()).decode()]})
        assert huge.status_code == 400 and "images[0]: 1500x10 pixels, more than 1024 a side" in huge.text

        rows = client.post("/v1/tabular/sample", json={"model": "table", "n": 5, "seed": 3}).json()["rows"]
        assert len(rows) == 5 and set(rows[0]) >= {"alcohol", "class"}
        holes = [{**row, "alcohol": None} for row in rows]
        filled = client.post("/v1/tabular/impute", json={"model": "table", "rows": holes}).json()["rows"]
        assert all(isinstance(r["alcohol"], float) for r in filled)
        assert [r["magnesium"] for r in filled] == [r["magnesium"] for r in rows], "present cells come back as sent"
        scores = client.post("/v1/tabular/score", json={"model": "table", "rows": rows}).json()["scores"]
        assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
        unknown = client.post("/v1/tabular/score", json={"model": "table", "rows": [{"nonsense": 1}]})
        assert unknown.status_code == 400 and "nonsense" in unknown.text


def test_a_seq2seq_model_answers_completions_and_chat_batched(tmp_path_factory):
    from .conftest import TINY_DATES

    run = genlab.fit(None, overrides=[*TINY_DATES, "train.max_steps=30", "train.val_every=30",
                                      "train.checkpoint_every=30", "data.limit=600", "eval.sampling.num_beams=3"],
                     out=tmp_path_factory.mktemp("s2s") / "run")
    sources = ["3 March 1987", "Tuesday, 4 May 2021", "12/01/1999"]
    want = run.sample(3, source=sources, temperature=0, max_new_tokens=12)
    app = serve_app([run.path], ServeConfig(**THREAD, names=["dates"], max_wait_ms=50))

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            asks = [client.post("/v1/completions", json={"model": "dates", "prompt": s, "max_tokens": 12,
                                                         "temperature": 0}) for s in sources]
            return await asyncio.gather(*asks)

    answers = [r.json()["choices"][0]["text"] for r in asyncio.run(together())]
    assert answers == want
    batches = app.state.server.metrics.render().decode()
    assert 'genlab_batch_size_count{model="dates"} 1.0' in batches, "the three greedy requests shared one call"
    with TestClient(app) as client:
        chat = client.post("/v1/chat/completions", json={"model": "dates", "temperature": 0, "max_tokens": 12,
                                                         "messages": [{"role": "system", "content": "be brief"},
                                                                      {"role": "user", "content": sources[0]}]})
        assert chat.json()["choices"][0]["message"]["content"] == want[0]
        endless = client.post("/v1/completions", json={"model": "dates", "prompt": "x", "max_tokens": 10**9})
        assert endless.status_code == 400 and "max_tokens: 1000000000 new tokens; the limit is 4096" in endless.text
        no_user = client.post("/v1/chat/completions", json={"model": "dates", "messages": [
            {"role": "system", "content": "x"}]})
        assert no_user.status_code == 400 and "needs a user message" in no_user.text
        # with no options, the server, the API and the CLI all search with the run's 3 beams (its eval.sampling)
        plain = client.post("/v1/completions", json={"model": "dates", "prompt": sources[1]}).json()
        assert run.model.sampling["num_beams"] == 3
        assert plain["choices"][0]["text"] == run.sample(1, source=sources[1])[0]
        from genlab.cli import app as cli

        printed = CliRunner().invoke(cli, ["sample", str(run.path), "--source", sources[1]])
        assert printed.output.strip() == plain["choices"][0]["text"]
        beam = client.post("/v1/completions", json={"model": "dates", "prompt": "x", "num_beams": 100})
        assert beam.status_code == 400 and "num_beams: Input should be less than or equal to 64" in beam.text


def test_echo_scores_the_prompt_as_transformers_does_and_logprobs_take_openai_shapes(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = runs["lm"].paths.model
    tokenizer, lm = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The with statement", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = torch.log_softmax(lm(torch.tensor([ids])).logits[0, :-1], -1).gather(1, torch.tensor(ids[1:])[:, None])
    with client_for(runs) as client:
        scored = client.post("/v1/completions", json={"model": "lm", "prompt": [ids, ids[:3]], "max_tokens": 0,
                                                      "echo": True, "logprobs": 1}).json()["choices"]
        got = scored[0]["logprobs"]
        assert scored[0]["text"] == tokenizer.decode(ids) and got["token_logprobs"][0] is None
        assert got["tokens"] == [tokenizer.decode([i]) for i in ids] and got["text_offset"][1] == len(got["tokens"][0])
        np.testing.assert_allclose(got["token_logprobs"][1:], want[:, 0].numpy(), atol=1e-4)
        pairs = zip(got["token_logprobs"][1:], got["top_logprobs"][1:], strict=True)
        assert all(max(top.values()) >= lp - 1e-6 for lp, top in pairs), "the top alternative is at least as likely"
        assert len(scored[1]["logprobs"]["tokens"]) == 3, "each prompt of a batch is scored on its own"

        drawn = client.post("/v1/completions", json={"model": "lm", "prompt": "The ", "max_tokens": 6,
                                                     "temperature": 0, "logprobs": 3}).json()["choices"][0]
        lp = drawn["logprobs"]
        assert "".join(lp["tokens"]) == drawn["text"] and all(len(t) == 3 for t in lp["top_logprobs"])
        assert all(v == pytest.approx(max(t.values())) for v, t in zip(lp["token_logprobs"], lp["top_logprobs"])), \
            "greedy tokens are the likeliest"
        chat = client.post("/v1/chat/completions", json={"model": "lm", "messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 4, "logprobs": True, "top_logprobs": 2}).json()
        content = chat["choices"][0]["logprobs"]["content"]
        # an untrained byte-level model may split a character across tokens: their bytes, joined, are the message
        joined = bytes(b for e in content for b in e["bytes"]).decode(errors="replace")
        assert joined == chat["choices"][0]["message"]["content"]
        assert all(len(e["top_logprobs"]) == 2 for e in content)
        for body, names in (({"prompt": [10**6]}, "token id 1000000"), ({"prompt": "x", "logprobs": 9}, "logprobs"),
                            ({"prompt": "x", "echo": True, "stream": True}, "echo")):
            bad = client.post("/v1/completions", json={"model": "lm", **body})
            assert bad.status_code in (400, 422) and names in bad.text, bad.text


def test_a_tokens_bytes_are_its_own_even_when_it_holds_part_of_a_character(runs):
    from genlab.serving.app import load_served

    served = load_served(runs["lm"].path, ServeConfig(**THREAD))
    text = "naïve café, 東京 🙂"
    ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [served.token_bytes(i) for i in ids]
    assert b"".join(pieces).decode() == text
    assert any(b"\xef\xbf\xbd" in served.token_text(i).encode() for i in ids), "some token splits a character"


def test_frequency_and_presence_penalties_follow_openai(runs):
    from genlab.serving.app import load_served

    served = load_served(runs["lm"].path, ServeConfig(**THREAD))
    try:
        engine = served.engine
        logits = torch.zeros(1, 50)
        logits[0, 7], logits[0, 9] = 3.0, 2.0  # 7 leads by 1
        seq = SimpleNamespace(ids=[1, 7], prompt_len=1, generated=1,
                              params=TextParams(temperature=0, presence_penalty=0.0, frequency_penalty=0.0),
                              generator=torch.Generator())
        assert engine._pick([seq], logits) == [7]
        seq.params = TextParams(temperature=0, presence_penalty=1.5)
        assert engine._pick([seq], logits) == [9], "a token already said loses the presence penalty"
        seq.params = TextParams(temperature=0, frequency_penalty=0.6)
        assert engine._pick([seq], logits) == [7], "said once, 7 loses 0.6 and still leads"
        seq.ids, seq.generated = [1, 7, 7], 2
        assert engine._pick([seq], logits) == [9], "said twice, it loses 1.2"
        assert logits[0, 7] == 3.0, "the batch's logits are left as they were"
    finally:
        served.stop(1)


def test_an_engine_process_that_cannot_load_its_model_says_why(tmp_path):
    from genlab.errors import GenlabError
    from genlab.serving.engine_process import RemoteEngine

    with pytest.raises(GenlabError, match="the text engine's process did not start: GenlabError: .*neither a run"):
        RemoteEngine(tmp_path)
