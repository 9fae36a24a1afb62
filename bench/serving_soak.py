"""genlab serve soaked: many clients on a mixed load for minutes, as a hostile world would send it.

Trains a small character LM and the digits diffusion model, starts `genlab serve` on both (a separate
process, its memory and its children's sampled from /proc; an output filter on, each client its own key), then runs
CLIENTS clients for SECONDS: streamed and plain completions, chat, images, scored prompts (echo), deliberately bad
requests (each must get a 4xx that names its field: huge stop strings, a sampler past the step limit, a string
where a number goes...), odd but valid ones that share batches with the others, text without spaces through the
filter, a fresh X-Forwarded-For each time, and clients that disconnect mid-stream or before a whole answer. Halfway,
the text engine's process is killed (kill -9): its in-flight requests may get 503 with Retry-After while it is
replaced. Prints requests by kind and status, the 5xx other than those, the bad requests answered wrongly, and the
server's resident memory over the first and last 30 s. Figures only.

Usage: python bench/serving_soak.py [SECONDS] [CLIENTS]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, free_port, start, train_models  # noqa: E402

warnings.filterwarnings("ignore")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 64
WINDOW = 30.0  # seconds at each end of the run whose memory is compared

# (body, the field the 4xx must name): each is wrong in one way
BAD = [({"model": "lm", "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
       ({"model": "lm", "prompt": "x", "top_k": 2**64}, "top_k"),
       ({"model": "lm", "prompt": "x", "temperature": -1}, "temperature"),
       ({"model": "lm", "prompt": [10**7]}, "prompt"),
       ({"model": "lm", "prompt": "x", "logprobs": 50}, "logprobs"),
       ({"model": "nope", "prompt": "x"}, "model"),
       ({"model": "lm", "prompt": "x", "n": 10**6}, "n"),
       ({"model": "lm", "prompt": "x", "stop": ["x" * 500_000] * 4}, "stop"),
       ({"model": "lm", "prompt": "x", "max_tokens": 4, "logit_bias": {"1": 5}}, "logit_bias")]
BAD_IMAGES = [({"model": "digits", "sampler": "ddpm", "steps": 1000}, "steps"),
              ({"model": "digits", "steps": 10**6}, "steps"),
              ({"model": "digits", "guidance_scale": "lots"}, "guidance_scale")]
ODD_IMAGES = [{"steps": "8"}, {"steps": 8.0}, {"steps": 8}]  # one value three ways: they share one batch


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its children (the text engine's process)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


async def one(client: httpx.AsyncClient, rng: random.Random, tally: collections.Counter, wrong: list) -> None:
    kind = rng.choice(["stream", "plain", "chat", "image", "odd", "echo", "digits", "bad", "leave", "walk"])
    headers = {"X-Forwarded-For": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"}
    if kind == "bad":
        body, field = rng.choice(BAD + BAD_IMAGES)
        route = "/v1/images/generations" if body["model"] == "digits" else "/v1/completions"
        r = await client.post(route, json=body, headers=headers)
        if not (400 <= r.status_code < 500 and field in r.text):
            wrong.append(f"{str(body)[:100]} -> {r.status_code} {r.text[:120]}")
    elif kind in ("stream", "leave"):
        body = {"model": "lm", "prompt": "ROMEO:\n", "max_tokens": 48, "stream": True, "seed": rng.randrange(10**6),
                "logprobs": rng.choice([None, 2])}
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            n = 0
            if r.status_code != 200:
                await r.aread()
            async for _ in r.aiter_lines():
                n += 1
                if kind == "leave" and n > 6:  # goes away mid-stream
                    break
    elif kind == "walk":  # a plain request whose client gives up before the answer
        try:
            r = await client.post("/v1/completions", json={"model": "lm", "prompt": "KING:", "max_tokens": 96},
                                  headers=headers, timeout=0.2)
        except httpx.TimeoutException:
            tally[(kind, "left")] += 1
            return
    elif kind == "plain":
        r = await client.post("/v1/completions", json={"model": "lm", "prompt": "JULIET:", "max_tokens": 32,
                                                       "n": rng.choice([1, 4])}, headers=headers)
    elif kind == "echo":
        r = await client.post("/v1/completions", json={"model": "lm", "prompt": "To be, or not to be " * 4,
                                                       "max_tokens": 0, "echo": True, "logprobs": 1}, headers=headers)
    elif kind == "digits":  # no spaces: the filter must still stream it, in linear time
        r = await client.post("/v1/completions", json={"model": "lm", "prompt": "0123456789" * 5, "max_tokens": 64},
                              headers=headers)
    elif kind == "chat":
        r = await client.post("/v1/chat/completions", json={"model": "lm", "max_tokens": 24, "messages": [
            {"role": "user", "content": "Speak."}]}, headers=headers)
    else:
        odd = rng.choice(ODD_IMAGES) if kind == "odd" else {"steps": 8}
        r = await client.post("/v1/images/generations", json={"model": "digits", "n": 2, **odd,
                                                                "seed": rng.randrange(10**6)}, headers=headers)
    status = r.status_code if kind != "leave" or r.status_code != 200 else "left"
    if status == 503 and r.headers.get("retry-after") and "restarting" in r.text:
        status = "503 restarting"  # the killed engine's own: in flight, or while it is replaced
    tally[(kind, status)] += 1


async def soak(url: str, pid: int) -> tuple[collections.Counter, list, list[tuple[float, float]]]:
    tally, wrong, memory = collections.Counter(), [], []
    deadline = time.monotonic() + SECONDS
    start_at = time.monotonic()

    async def client_loop(i: int) -> None:
        rng = random.Random(i)
        headers = {"Authorization": f"Bearer key-{i}"}
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
            while time.monotonic() < deadline:
                try:
                    await one(client, rng, tally, wrong)
                except httpx.HTTPError as err:
                    tally[("transport", type(err).__name__)] += 1

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            memory.append((time.monotonic() - start_at, rss_mb(pid)))
            await asyncio.sleep(1.0)

    async def kill_engine() -> None:  # halfway, as the kernel's OOM killer would
        await asyncio.sleep(SECONDS / 2)
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        for child in children:
            os.kill(child, signal.SIGKILL)
        print(f"killed the engine process(es) {children} at {time.monotonic() - start_at:.0f} s")

    await asyncio.gather(sample_memory(), kill_engine(), *(client_loop(i) for i in range(CLIENTS)))
    return tally, wrong, memory


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    print(f"{CLIENTS} clients for {SECONDS:.0f} s; training the models...")
    lm, digits = train_models(tmp, 100, 30)
    port = free_port()
    config = tmp / "serve.yaml"
    config.write_text(yaml.safe_dump({"names": ["lm", "digits"], "drain_seconds": 0, "max_queue": 1024, "api_keys": [
        f"key-{i}" for i in range(CLIENTS)], "filters": [{"terms": ["villain"], "action": "replace"},
                                                          {"type": "pii", "action": "redact"}],
                                      "limits": {"max_steps": 25}}))  # the recipe's own 25 steps
    proc = start([str(BIN / "genlab"), "serve", str(lm.path), str(digits.path), "--port", str(port), "--config",
                  str(config)], port)
    try:
        tally, wrong, memory = asyncio.run(soak(f"http://127.0.0.1:{port}", proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n{sum(tally.values())} requests:")
    for (kind, status), n in sorted(tally.items(), key=lambda kv: str(kv[0])):
        print(f"  {kind:<10} {status!s:<18} {n:6d}")
    errors = sum(n for (kind, status), n in tally.items() if isinstance(status, int) and status >= 500)
    restarting = sum(n for (kind, status), n in tally.items() if status == "503 restarting")
    print(f"5xx answers: {errors} (beside {restarting} 503s of the killed engine's own); bad requests not answered "
          f"with a 4xx naming their field: {len(wrong)}")
    for line in wrong[:5]:
        print(f"  {line}")
    first = [mb for t, mb in memory if t <= WINDOW]
    last = [mb for t, mb in memory if t >= SECONDS - WINDOW]
    if first and last:
        a, b = statistics.median(first), statistics.median(last)
        print(f"server RSS: median {a:.0f} MB over the first {WINDOW:.0f} s, {b:.0f} MB over the last "
              f"({100 * (b - a) / a:+.1f}%); peak {max(mb for _, mb in memory):.0f} MB")
    print(json.dumps({"requests": sum(tally.values()), "5xx": errors, "503_restarting": restarting,
                      "wrong_4xx": len(wrong)}))


if __name__ == "__main__":
    main()
