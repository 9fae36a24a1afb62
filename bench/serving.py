"""genlab serve under load: continuous batching against one request at a time, and against `transformers serve`.

Trains a character-level shakespeare model (the recipe's shape, briefly: generation speed does not
depend on how well it writes) and the digits diffusion model, then starts, as separate processes:
genlab serve with batching (max_batch_size 32), genlab serve one request at a time
(max_batch_size 1), and, when transformers' serving extras are installed, `transformers serve
--continuous-batching` on the same exported LM folder. For 1, 8 and 32 concurrent streaming
clients it prints generated tokens/s (images/s for the image model), p50 and p99 latency and
time to first token, with each round's ratio to the one-at-a-time server; rounds interleave the servers and
medians are reported. A point's clients share one aiohttp connection pool, made before its clock starts: the
load generator shares the two cores with the servers, and aiohttp costs it less than half the CPU httpx did per
streamed token (0.2 of a core against 0.5 at 32 clients). Then a 20 s load test: 32 clients on mixed routes, with
errors counted. Figures only.

Usage: python bench/serving.py [SECONDS_PER_POINT] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import aiohttp
import httpx
import yaml

import genlab

warnings.filterwarnings("ignore")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
CLIENTS = (1, 8, 32)
NEW_TOKENS = 64
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{command[0]} did not come up on port {port}")


async def stream_completion(session: aiohttp.ClientSession, url: str, model: str, seed: int
                            ) -> tuple[int, float, float]:
    """(tokens, latency, time to first token) of one streamed completion."""
    body = {"model": model, "prompt": "ROMEO:\n", "max_tokens": NEW_TOKENS, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, chunks, usage = time.perf_counter(), None, 0, None
    async with session.post(f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:  # the SSE stream, a line at a time
            if not line.startswith(b"data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]["completion_tokens"]
            if data.get("choices") and data["choices"][0].get("text"):
                first = first or time.perf_counter()
                chunks += 1
    end = time.perf_counter()
    return usage or chunks, end - start, (first or end) - start


async def image(session: aiohttp.ClientSession, url: str, model: str, seed: int) -> tuple[int, float, float]:
    start = time.perf_counter()
    async with session.post(f"{url}/v1/images/generations",
                            json={"model": model, "n": 1, "seed": seed, "steps": 20}) as r:
        r.raise_for_status()
        images = len((await r.json())["data"])
    latency = time.perf_counter() - start
    return images, latency, latency


async def load(call, url: str, model: str, clients: int, seconds: float) -> dict:
    """`clients` loops calling `call` for `seconds`: output units/s, p50/p99 latency, p50 first output, errors."""
    results, errors = [], 0

    async def client_loop(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            try:
                results.append(await call(session, url, model, 1000 * i + n))
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
                errors += 1
            n += 1

    # one pool, a connection per client, made before the clock starts (what a client costs to make is not the
    # servers' to pay)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(client_loop(session, i) for i in range(clients)))
        wall = time.perf_counter() - start
    latencies = sorted(r[1] for r in results) or [float("nan")]
    return {"rate": sum(r[0] for r in results) / wall, "p50": latencies[len(latencies) // 2],
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "ttft": statistics.median(r[2] for r in results) if results else float("nan"), "errors": errors,
            "requests": len(results)}


def table(title: str, unit: str, figures: dict[tuple[str, int], list[dict]], base: str) -> None:
    print(f"\n{title}")
    print(f"  {'server':<44} {'clients':>7} {unit:>10} {'vs ' + base:>14} {'p50 s':>7} {'p99 s':>7} "
          f"{'first s':>8} {'errors':>6}  each round")
    for clients in CLIENTS:
        ref = statistics.median(f["rate"] for f in figures[(base, clients)])
        for (name, c), runs in figures.items():
            if c != clients:
                continue
            rate = statistics.median(f["rate"] for f in runs)
            rounds = ", ".join(f"{f['rate'] / b['rate']:.2f}" if b["rate"] else "nan"
                               for f, b in zip(runs, figures[(base, clients)], strict=True))
            print(f"  {name:<44} {c:7d} {rate:10.1f} {rate / ref:13.2f}x "
                  f"{statistics.median(f['p50'] for f in runs):7.3f} {statistics.median(f['p99'] for f in runs):7.3f} "
                  f"{statistics.median(f['ttft'] for f in runs):8.3f} {sum(f['errors'] for f in runs):6d}  {rounds}")


def train_models(tmp: Path, lm_steps: int, digits_steps: int) -> tuple[genlab.Run, genlab.Run]:
    """The shakespeare char LM and the digits diffusion model, briefly: serving speed does not depend on quality."""
    def brief(steps: int) -> list[str]:
        return [f"train.max_steps={steps}", "train.max_time=null", f"train.val_every={steps}",
                f"train.checkpoint_every={steps}", "train.progress=none"]

    return (genlab.fit("configs/shakespeare-char.yaml", out=tmp / "lm", overrides=brief(lm_steps)),
            genlab.fit("configs/digits-diffusion.yaml", out=tmp / "digits", overrides=brief(digits_steps)))


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    print(f"{SECONDS:.0f} s per point, {ROUNDS} rounds; {NEW_TOKENS} new tokens per completion; training the models...")
    lm, digits = train_models(tmp, 150, 50)
    servers, procs = {}, []
    for name, batch in (("genlab serve, continuous batching", 32), ("genlab serve, one request at a time", 1)):
        port = free_port()
        config = tmp / f"serve-{batch}.yaml"
        config.write_text(yaml.safe_dump({"names": ["lm", "digits"], "drain_seconds": 0, "max_batch_size": batch,
                                          "max_queue": 1024}))
        procs.append(start([str(BIN / "genlab"), "serve", str(lm.path), str(digits.path), "--port", str(port),
                            "--config", str(config)], port))
        servers[name] = (f"http://127.0.0.1:{port}", "lm")
    anchor = "transformers serve --continuous-batching"
    try:
        port = free_port()
        procs.append(start([str(BIN / "transformers"), "serve", str(lm.paths.model), "--continuous-batching",
                            "--device", "cpu", "--port", str(port), "--host", "127.0.0.1"], port))
        servers[anchor] = (f"http://127.0.0.1:{port}", str(lm.paths.model))
    except (RuntimeError, FileNotFoundError) as err:
        print(f"({anchor} not measured: {err})")
    try:
        for url, model in servers.values():  # warm-up: lazy loading and first-call costs stay out
            asyncio.run(load(stream_completion, url, model, 2, 1.0))
        text: dict[tuple[str, int], list[dict]] = {(n, c): [] for c in CLIENTS for n in servers}
        images: dict[tuple[str, int], list[dict]] = {(n, c): [] for c in CLIENTS for n in list(servers)[:2]}
        for r in range(ROUNDS):
            for clients in CLIENTS:
                order = list(servers)[r % 2:] + list(servers)[:r % 2]
                for name in order:
                    url, model = servers[name]
                    text[(name, clients)].append(asyncio.run(load(stream_completion, url, model, clients, SECONDS)))
                for name in order:
                    if (name, clients) in images:
                        url, _ = servers[name]
                        images[(name, clients)].append(asyncio.run(load(image, url, "digits", clients, SECONDS)))
        params = lm.summary["parameters"] / 1e6
        table(f"language model ({params:.1f} M parameters, char-level, streamed completions)", "tokens/s", text,
              "genlab serve, one request at a time")
        table("image model (digits diffusion, 20 DPM-Solver steps per image)", "images/s", images,
              "genlab serve, one request at a time")
        url, _ = servers["genlab serve, continuous batching"]
        print("\nload test: 32 clients for 20 s, streamed completions and images mixed, on the batching server")

        async def mixed(session, url, model, seed):
            return await (image(session, url, "digits", seed) if seed % 4 == 0 else
                          stream_completion(session, url, "lm", seed))
        result = asyncio.run(load(mixed, url, "lm", 32, 20.0))
        print(f"  {result['requests']} requests, {result['errors']} errors; p50 {result['p50']:.3f} s, "
              f"p99 {result['p99']:.3f} s; {result['requests'] / 20:.1f} requests/s")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
