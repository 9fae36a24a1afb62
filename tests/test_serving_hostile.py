"""genlab serve against the second attacker's read: filters over everything that leaves, linear filtering off the
event loop, echo charged and scored alone, clients that leave, one key's share of a queue, and no internal text in
an error."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from concurrent.futures import Future

import httpx
import pytest
from fastapi.testclient import TestClient

from genlab.responsible.memorization import CopyIndex
from genlab.serving import ServeConfig, serve_app
from genlab.serving.engine import TextEngine, TextParams
from genlab.serving.filters import OutputFilter
from genlab.serving.workers import BatchWorker

from .conftest import running, serving

THREAD = {"engine": "thread"}
BODY = {"model": "lm", "prompt": "The ", "max_tokens": 40, "min_tokens": 40, "temperature": 0.7, "seed": 0}


def lm_client(runs, **config) -> TestClient:
    return TestClient(serve_app([runs["lm"].path], ServeConfig(names=["lm"], **{**THREAD, **config})),
                      raise_server_exceptions=False)


def events(stream: str) -> list[dict]:
    return [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]


def test_logprobs_echoes_and_stream_chunks_never_carry_what_the_filters_removed(runs):
    with lm_client(runs) as client:
        text = client.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
        plain = client.post("/v1/completions", json={**BODY, "logprobs": 3}).json()["choices"][0]
    words = re.findall(r"\b[A-Za-z]{3,}\b", text)
    word = max(set(words), key=words.count)  # the likeliest to show among the top alternatives too
    blocked = re.compile(rf"\b{word}\b", re.IGNORECASE)
    replace = [{"terms": [word], "action": "replace", "replacement": "***"}]
    with lm_client(runs, filters=replace) as client:
        whole = client.post("/v1/completions", json={**BODY, "logprobs": 3}).json()["choices"][0]
        streamed = events(client.post("/v1/completions", json={**BODY, "logprobs": 3, "stream": True}).text)
        chat = client.post("/v1/chat/completions", json={"model": "lm", "seed": 0, "max_tokens": 40, "min_tokens": 40,
                                                         "messages": [{"role": "user", "content": "The "}],
                                                         "logprobs": True, "top_logprobs": 5}).json()["choices"][0]
        echoed = client.post("/v1/completions", json={"model": "lm", "prompt": f"The {word} is", "echo": True,
                                                      "max_tokens": 0, "logprobs": 1}).json()["choices"][0]
    assert "***" in whole["text"] and not blocked.search(whole["text"])
    lists = [whole["logprobs"], *(e["choices"][0]["logprobs"] for e in streamed if e["choices"][0]["logprobs"])]
    for logprobs in lists:
        assert not blocked.search("".join(logprobs["tokens"])), "the tokens of a replaced term are dropped"
        assert not any(blocked.search(t) for top in logprobs["top_logprobs"] if top for t in top)
    assert len(whole["logprobs"]["tokens"]) < len(plain["logprobs"]["tokens"])
    assert "".join(e["choices"][0]["text"] for e in streamed) == whole["text"]
    content = chat["logprobs"]["content"]
    assert not blocked.search(bytes(b for entry in content for b in entry["bytes"]).decode(errors="replace"))
    assert not any(blocked.search(alt["token"]) for entry in content for alt in entry["top_logprobs"])
    assert echoed["text"] == "The *** is" and not blocked.search("".join(echoed["logprobs"]["tokens"]))
    with lm_client(runs, filters=[{"terms": [word], "action": "refuse"}]) as client:
        refused = client.post("/v1/completions", json={**BODY, "logprobs": 3}).json()["choices"][0]
    assert refused["text"] == "" and not refused["logprobs"]["tokens"], "a refused output says nothing in logprobs"

    with lm_client(runs, filters=[{"type": "pii", "action": "redact"}]) as client:  # a filter that changes nothing
        kept = client.post("/v1/completions", json={**BODY, "logprobs": 3}).json()["choices"][0]
        stopped = client.post("/v1/completions", json={**BODY, "logprobs": 1, "stop": [word]}).json()["choices"][0]
    assert kept["logprobs"] == plain["logprobs"] and "".join(kept["logprobs"]["tokens"]) == text
    assert "".join(stopped["logprobs"]["tokens"]).startswith(stopped["text"]), stopped
    assert len("".join(stopped["logprobs"]["tokens"])) < len(stopped["text"]) + len(word), "nothing past the stop"


def test_a_term_split_between_the_echo_and_the_output_and_a_datum_longer_than_the_hold_are_caught():
    rules = ServeConfig.model_validate({"filters": [{"terms": ["badword"], "action": "replace"},
                                                    {"type": "pii", "action": "redact"}]}).filters
    judge = OutputFilter(rules, echo="Say bad")
    assert "".join(judge.feed(c) for c in "word now") + judge.finish() == "Say [filtered] now"
    email = "christopher.montgomery.wellington@internationalbusinessmachinescorp.com"
    assert len(email) > judge.hold
    judge = OutputFilter(rules)
    out = "".join(judge.feed(c) for c in f"Write to {email} today.") + judge.finish()
    assert "@" not in out and "[EMAIL]" in out, "its first characters may be out before it is one; never the rest"


@pytest.mark.parametrize("text", ["0123456789" * 600, "生成模型的文本没有空格" * 500])
def test_filtering_text_without_spaces_costs_what_it_adds_and_streams_as_it_goes(text, monkeypatch):
    from genlab.serving import filters

    scanned = []
    find_pii = filters.find_pii
    monkeypatch.setattr(filters, "find_pii", lambda t, kinds: scanned.append(len(t)) or find_pii(t, kinds))
    rules = ServeConfig.model_validate({"filters": [{"terms": ["badword"]}, {"type": "pii", "action": "redact"}]})
    judge = OutputFilter(rules.filters)
    released = []
    for i in range(0, len(text), 3):  # token-sized pieces
        released.append(judge.feed(text[i:i + 3]))
    released.append(judge.finish())
    bound = filters.PII_CONTEXT + judge.hold + 3  # what it reads again before, what it holds, what came
    assert max(scanned) <= bound, f"each piece scans a bounded window, not all that is held ({max(scanned)})"
    assert sum(map(len, released[:-1])) >= len(text) - judge.hold - 3, "released as it streams, not at the end"
    assert "".join(released) == text


def test_the_filters_judge_off_the_event_loop(runs, monkeypatch):
    on_loop = []
    feed = OutputFilter.feed

    def watched(self, delta):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return feed(self, delta)

    monkeypatch.setattr(OutputFilter, "feed", watched)
    with lm_client(runs, filters=[{"terms": ["badword"]}]) as client:
        assert client.post("/v1/completions", json=BODY).status_code == 200
        assert client.post("/v1/completions", json={**BODY, "stream": True}).status_code == 200
    assert on_loop and not any(on_loop)


def test_the_memorized_filter_can_count_a_copy_that_began_in_the_prompt():
    passage = ("The committee met on a grey Tuesday and agreed, after a long and tiring debate, that the old bridge "
               "over the river would be rebuilt in stone before the winter floods came again to the valley.")
    index = CopyIndex.build([passage])
    prompt, piece = passage[:120], passage[120:150]  # the client feeds the passage back, 30 characters a time

    def judged(prompt_rule: bool, output: str) -> str:
        rules = ServeConfig.model_validate({"filters": [{"type": "memorized", "prompt": prompt_rule}]}).filters
        judge = OutputFilter(rules, index, prompt=prompt)
        return judge.feed(output) + judge.finish()

    assert judged(False, piece) == piece, "shorter than min_chars: no copy in the output alone"
    assert judged(True, piece) == "[MEMORIZED]", "with the prompt, the copy is whole"
    own = "! And then something else entirely happened to them"
    assert judged(True, own) == own, "a continuation of its own is not flagged"


def test_echo_is_charged_for_the_tokens_it_scores_and_scores_alone(runs):
    prompt = "The with statement is used to wrap the execution of a block with methods defined by a context manager."
    with lm_client(runs, rate_limit={"tokens_per_minute": 120}) as client:
        tokens = len(client.app.state.server.models["lm"].encode(prompt))
        score = {"model": "lm", "prompt": prompt, "echo": True, "max_tokens": 0, "logprobs": 0}
        first = client.post("/v1/completions", json=score)
        second = client.post("/v1/completions", json=score)
    assert 60 < tokens <= 120 and first.status_code == 200
    assert second.status_code == 429, "scoring a prompt costs its tokens, max_tokens 0 or not"

    engine = TextEngine(runs["lm"].model.lm, runs["lm"].model.tokenizer, max_wait_ms=300)
    lm, calls = engine.lm, []

    def recorded(**kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs.get("logits_to_keep")))
        return lm(**kwargs)

    engine.lm = recorded
    done = [threading.Event() for _ in range(3)]
    ids = runs["lm"].model.tokenizer("The import system", add_special_tokens=False)["input_ids"]
    try:
        for i, params in enumerate([TextParams(max_tokens=2), TextParams(max_tokens=2, logprobs=1, echo=True),
                                    TextParams(max_tokens=2)]):
            engine.submit(ids, params, 0, lambda e, i=i: e[0] == "done" and done[i].set())
        assert all(d.wait(30) for d in done)
    finally:
        engine.stop(0)
    prefills = [c for c in calls if c[1] is not None]
    assert sorted(prefills) == [(1, 0), (2, 1)], "the scoring sequence is prefilled alone; the others keep one row"


def test_a_client_that_leaves_a_non_streamed_request_stops_its_generation(runs):
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"]))
    engine, seqs = app.state.server.models["lm"].engine, []
    submit, lm = engine.submit, engine.lm
    engine.submit = lambda *a, **k: seqs.append(submit(*a, **k)) or seqs[-1]
    engine.lm = lambda **kwargs: time.sleep(0.02) or lm(**kwargs)  # 90 steps take 2 s at least
    body = {"model": "lm", "prompt": "x", "max_tokens": 90, "min_tokens": 90}
    with running(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 20
        while seqs[0].finish is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the handler answers the client that left
        metrics = httpx.get(f"{url}/metrics").text
    assert seqs[0].finish == "cancelled" and seqs[0].generated < 90
    assert 'route="/v1/completions",status="499"' in metrics, "logged as the client's leaving, not a server error"


def test_a_queued_job_whose_client_left_is_never_run():
    gate, ran = threading.Event(), []

    def run(key, items):
        gate.wait(10)
        ran.extend(items)
        return items

    worker = BatchWorker(run, max_batch_size=1, max_wait_ms=0)
    try:
        first: Future = worker.submit("a", [1])
        time.sleep(0.05)  # the worker has taken it
        second = worker.submit("a", [2])
        assert second.cancel(), "waiting: it can be dropped"
        assert worker.depth == 1, "and it leaves the queue at once"
        gate.set()
        assert first.result(10) == [1]
        third = worker.submit("a", [3])
        assert third.result(10) == [3] and not third.cancel(), "running or done: it cannot"
    finally:
        worker.stop(0)
    assert ran == [1, 3]


def test_one_key_holds_at_most_its_share_of_a_models_queue(runs):
    app = serve_app([runs["lm"].path], ServeConfig(**THREAD, names=["lm"], api_keys=["a", "b"], max_queue=4,
                                                   max_batch_size=1, rate_limit={"queue_share": 0.5}))

    def post(client, key: str, **extra):
        return client.post("/v1/completions", json={**BODY, **extra}, headers={"Authorization": f"Bearer {key}"})

    async def flood():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            crowd = await asyncio.gather(post(client, "a"), post(client, "a"), post(client, "a"), post(client, "b"))
            return crowd, await post(client, "b", n=3)

    (a1, a2, a3, b), b3 = asyncio.run(flood())
    assert sorted([a1.status_code, a2.status_code, a3.status_code]) == [200, 200, 429]
    refused = next(r for r in (a1, a2, a3) if r.status_code == 429)
    assert "queue share" in refused.text and refused.headers["retry-after"] == "1"
    assert b.status_code == 200, "another key still gets in"
    assert b3.status_code == 400 and "n: 3" in b3.text, "more than a share can ever hold is no reason to retry"
    guard = app.state.server.guard
    assert guard._queued == {}, "every place is given back"
    guard.take_share("key:x", "lm", 2, 4)
    with pytest.raises(Exception, match="2 of this key's sequences are waiting or running .* and 1 more"):
        guard.take_share("key:x", "lm", 1, 4)


def test_errors_never_quote_internal_exception_text(runs, monkeypatch):
    secret = "/srv/secret/path.py line 7"

    def broken(self, seqs, logits):
        raise RuntimeError(secret)

    with lm_client(runs) as client:
        monkeypatch.setattr(TextEngine, "_pick", broken)
        failed = client.post("/v1/completions", json=BODY)
        streamed = client.post("/v1/completions", json={**BODY, "stream": True})
    assert failed.status_code == 500 and failed.json()["error"]["message"] == "generation failed"
    assert secret not in failed.text and secret not in streamed.text and "generation failed" in streamed.text

    app = serve_app([runs["digits"].path], ServeConfig(names=["digits"]))

    def refuses(key, items):
        raise ValueError(secret)

    app.state.server.models["digits"].worker.run = refuses
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/v1/images/generations", json={"model": "digits", "n": 1})
    assert answer.status_code == 400 and secret not in answer.text and "could not take it" in answer.text


def listening(runs, config: ServeConfig):
    """`genlab serve`'s own uvicorn settings (listen.py) around the app, on a free loopback port: its URL."""
    from genlab.serving.listen import uvicorn_config

    return serving(uvicorn_config(serve_app([runs["lm"].path], config), config))


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
def test_a_fresh_x_forwarded_for_per_request_does_not_escape_the_per_client_limits(runs, trusted):
    config = ServeConfig(**THREAD, names=["lm"], port=0, trusted_proxies=trusted,
                         rate_limit={"requests_per_minute": 2})
    body = {"model": "lm", "prompt": "x", "max_tokens": 1}
    with listening(runs, config) as url:
        # straight to the server, a client sends the header itself; through a trusted proxy, the proxy appends the
        # address it saw, and what came before it is still the client's to choose
        sent = [f"10.0.0.{i}" + (", 192.0.2.7" if trusted else "") for i in range(4)]
        codes = [httpx.post(f"{url}/v1/completions", json=body, timeout=30,
                            headers={"X-Forwarded-For": header}).status_code for header in sent]
    assert codes == [200, 200, 429, 429], "one client, under one address, whatever the header says"


def test_a_request_head_past_16_kb_is_refused_before_the_app_reads_it(runs):
    """httptools' parser would hand the app a head of any size (50 MB was answered 200): the server parses with
    h11, which bounds it."""
    with listening(runs, ServeConfig(**THREAD, names=["lm"], port=0)) as url:
        host, port = url.removeprefix("http://").split(":")
        assert httpx.get(f"{url}/health", headers={"X-Big": "a" * 8000}).status_code == 200
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            answer = b""
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                for i in range(1000):  # 1 MB of headers, a kilobyte each
                    sock.sendall(b"X-A%d: %s\r\n" % (i, b"a" * 1000))
                sock.sendall(b"\r\n")
                answer = sock.recv(200)
            except OSError:
                pass  # closed while the head was still coming (reset, broken pipe, aborted: by platform)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
