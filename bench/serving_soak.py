"""genlab serve soaked: many clients on a mixed load for minutes, as a hostile world would send it.

Trains a small character LM and the digits diffusion model, starts `genlab serve` on both (a separate
process, its memory and its children's sampled from /proc), then runs CLIENTS clients for SECONDS: streamed and plain
completions, chat, images, deliberately bad requests (each must get a 4xx that names its field), and
clients that disconnect mid-stream. Prints requests by kind and status, any 5xx, the bad requests
answered wrongly, and the server's resident memory over the first and last 30 s. Figures only.

Usage: python bench/serving_soak.py [SECONDS] [CLIENTS]
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
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
       ({"model": "lm", "prompt": "x", "n": 10**6}, "n")]


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
    kind = rng.choice(["stream", "plain", "chat", "image", "bad", "leave"])
    if kind == "bad":
        body, field = rng.choice(BAD)
        r = await client.post("/v1/completions", json=body)
        if not (400 <= r.status_code < 500 and field in r.text):
            wrong.append(f"{body} -> {r.status_code} {r.text[:120]}")
    elif kind in ("stream", "leave"):
        body = {"model": "lm", "prompt": "ROMEO:\n", "max_tokens": 48, "stream": True, "seed": rng.randrange(10**6)}
        async with client.stream("POST", "/v1/completions", json=body) as r:
            n = 0
            async for _ in r.aiter_lines():
                n += 1
                if kind == "leave" and n > 6:  # goes away mid-stream
                    break
    elif kind == "plain":
        r = await client.post("/v1/completions", json={"model": "lm", "prompt": "JULIET:", "max_tokens": 32})
    elif kind == "chat":
        r = await client.post("/v1/chat/completions", json={"model": "lm", "max_tokens": 24, "messages": [
            {"role": "user", "content": "Speak."}]})
    else:
        r = await client.post("/v1/images/generations", json={"model": "digits", "n": 2, "steps": 8,
                                                                "seed": rng.randrange(10**6)})
    status = r.status_code if kind not in ("stream", "leave") else (r.status_code if kind == "stream" else "left")
    tally[(kind, status)] += 1


async def soak(url: str, pid: int) -> tuple[collections.Counter, list, list[tuple[float, float]]]:
    tally, wrong, memory = collections.Counter(), [], []
    deadline = time.monotonic() + SECONDS
    start_at = time.monotonic()

    async def client_loop(i: int) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while time.monotonic() < deadline:
                try:
                    await one(client, rng, tally, wrong)
                except httpx.HTTPError as err:
                    tally[("transport", type(err).__name__)] += 1

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            memory.append((time.monotonic() - start_at, rss_mb(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample_memory(), *(client_loop(i) for i in range(CLIENTS)))
    return tally, wrong, memory


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    print(f"{CLIENTS} clients for {SECONDS:.0f} s; training the models...")
    lm, digits = train_models(tmp, 100, 30)
    port = free_port()
    config = tmp / "serve.yaml"
    config.write_text(yaml.safe_dump({"names": ["lm", "digits"], "max_queue": 1024,
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
    print(f"5xx answers: {errors}; bad requests not answered with a 4xx naming their field: {len(wrong)}")
    for line in wrong[:5]:
        print(f"  {line}")
    first = [mb for t, mb in memory if t <= WINDOW]
    last = [mb for t, mb in memory if t >= SECONDS - WINDOW]
    if first and last:
        a, b = statistics.median(first), statistics.median(last)
        print(f"server RSS: median {a:.0f} MB over the first {WINDOW:.0f} s, {b:.0f} MB over the last "
              f"({100 * (b - a) / a:+.1f}%); peak {max(mb for _, mb in memory):.0f} MB")
    print(json.dumps({"requests": sum(tally.values()), "5xx": errors, "wrong_4xx": len(wrong)}))


if __name__ == "__main__":
    main()
