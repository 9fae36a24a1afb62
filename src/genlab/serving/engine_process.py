"""The text engine in a process of its own, so that decoding and the event loop do not share one interpreter lock.

A small model's decoding step is mostly Python (transformers' layers, sampling, detokenizing), and so is
the server's work per streamed chunk; in one process they take turns on the GIL and each waits for
the other. Here the server's process keeps the routes and the tokenizer, and a child process
(`_child`, in a fresh interpreter) loads the model and runs `TextEngine`. They speak over
one socket pair: the server sends submit and cancel messages; the child sends, once per decoding
step, that step's events in one message. A child that dies fails its open sequences as unavailable (503 with a
Retry-After) and is replaced, the server not ready meanwhile, and unhealthy if no child will start again; a server
that dies closes the socket, and the child exits.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from genlab.errors import GenlabError
from genlab.serving.engine import Emit, TextEngine, TextParams
from genlab.serving.workers import EngineStopped

START_SECONDS = 600.0  # loading a large model from a slow disk
FAMILY_LOADER = "genlab.serving.engine_process:family_lm"

log = logging.getLogger("genlab.serve")


class _Handle:
    """The server's side of one sequence: what `Generation` reads (`generated`) and sets (`cancelled`)."""

    def __init__(self, key: int, emit: Emit, engine: RemoteEngine) -> None:
        self.key, self.emit, self.engine = key, emit, engine
        self.generated = 0
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        if value and not self._cancelled:
            self._cancelled = True
            self.engine._cancel(self)


class RemoteEngine:
    """`TextEngine`'s interface (`submit`, `alive`, `depth`, `stop`) over a child process that holds the model. A
    child that dies is replaced: its sequences fail as unavailable (503, retry) and new ones wait for the new child."""

    def __init__(self, folder: str | Path, *, load: str = FAMILY_LOADER, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, on_step: Callable[[int], None] | None = None,
                 restarts: int = 3) -> None:
        """`load`: the "module:function" that gives the child (LM, tokenizer) from a model folder."""
        self.folder, self.load, self.restarts = str(folder), load, restarts
        self.options = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "max_queue": max_queue}
        self.bound = max_queue + max_batch_size  # waiting plus decoding, as TextEngine's queue and batch allow
        self.on_step = on_step or (lambda size: None)
        self.steps = 0  # decoding steps the child has run
        self.remote_depth = 0  # sequences the child holds, waiting or decoding, after its last step
        self.started = 0  # children started, the first included
        self.failed = False  # the child died and could not be replaced: the server is unhealthy
        self._stopping = False
        self._handles: dict[int, _Handle] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()  # handles join and leave under it, so none is added to a dead child's
        self._send_lock = threading.Lock()
        began = time.monotonic()
        self._proc, self._conn = self._spawn()
        self.load_seconds = time.monotonic() - began  # how long a replacement takes: the Retry-After it asks
        self._reader = self._read_in_thread()

    def _spawn(self) -> tuple[subprocess.Popen, Connection]:
        """Start a child, hand it the model folder, and wait until it has loaded it."""
        ours, theirs = socket.socketpair()
        entry = f"from genlab.serving.engine_process import _child; _child({theirs.fileno()})"
        # OpenMP's threads sleep when they wait rather than spin: two processes share the cores, and a spinning
        # pool starves the other (measured: 3x the requests under a mixed load)
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        proc = subprocess.Popen([sys.executable, "-c", entry], pass_fds=[theirs.fileno()],
                                stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        conn = Connection(ours.detach())
        conn.send((self.folder, self.load, self.options))
        try:
            reply = conn.recv() if conn.poll(START_SECONDS) else ("failed", "no answer")
        except (EOFError, OSError):  # it died before answering (its error is on stderr)
            reply = ("failed", f"it exited with code {proc.wait()}")
        if reply[0] != "ready":
            proc.kill()
            proc.wait()
            conn.close()
            raise GenlabError(f"{self.folder}: the text engine's process did not start: {reply[1]}")
        self.started += 1
        return proc, conn

    def _read_in_thread(self) -> threading.Thread:
        reader = threading.Thread(target=self._read, args=(self._conn,), name="genlab-text-engine-reader",
                                  daemon=True)
        reader.start()
        return reader

    def submit(self, prompt_ids: list[int], params: TextParams, seed: int | None, emit: Emit) -> _Handle:
        """Queue one sequence; raises queue.Full when waiting and decoding sequences are at their bound, and
        EngineStopped when the child is gone (or being replaced)."""
        with self._lock:
            if not self.alive:
                raise EngineStopped(self._down(), retry_after=self.load_seconds + 1)
            if len(self._handles) >= self.bound:
                raise queue.Full
            handle = _Handle(next(self._keys), emit, self)
            self._handles[handle.key] = handle
        try:
            self._send(("submit", handle.key, list(prompt_ids), params, seed))
        except OSError:
            self._handles.pop(handle.key, None)
            raise EngineStopped(self._down(), retry_after=self.load_seconds + 1) from None
        return handle

    def _down(self) -> str:
        return "is not running: its engine process could not be restarted" if self.failed else \
            "is restarting: its engine process stopped"

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None and self._reader.is_alive() and not self._stopping

    @property
    def healthy(self) -> bool:
        """Alive, or being replaced: false only once no child could be started again."""
        return not self.failed

    @property
    def depth(self) -> int:
        """Sequences waiting or decoding (a cancelled one leaves at once)."""
        return len(self._handles)

    def kill(self) -> None:
        """Kill the child (as the kernel's OOM killer would): for tests and drills."""
        self._proc.kill()

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Finish what is queued and running (up to `drain_seconds`), then stop the child."""
        end = time.monotonic() + drain_seconds
        while self._handles and time.monotonic() < end and self.alive:
            time.sleep(0.01)
        self._stopping = True
        try:
            self._send(("stop",))
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._conn.close()

    def _cancel(self, handle: _Handle) -> None:
        with self._lock:
            left = self._handles.pop(handle.key, None)
        if left is not None:
            try:
                self._send(("cancel", handle.key))
            except OSError:  # the child is gone: nothing to cancel
                pass

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _read(self, conn: Connection) -> None:
        """Deliver each step's events to their sequences; when the child goes, fail what is still open and start
        another."""
        try:
            while True:
                sizes, events, self.remote_depth = conn.recv()
                self.steps += len(sizes)
                for size in sizes:
                    self.on_step(size)
                for key, generated, event in events:
                    # pop, not get-then-del: a client that leaves pops its handle from the event loop's thread
                    handle = self._handles.pop(key, None) if event[0] in ("done", "error", "unavailable") else \
                        self._handles.get(key)
                    if handle is None:  # cancelled: its last events are not wanted
                        continue
                    handle.generated = generated
                    self._deliver(handle, event)
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("%s: reading the text engine's process failed", self.folder)
        if self._stopping:
            return
        try:
            self._proc.kill()  # if it still runs, what it says can no longer be read
            self._proc.wait()
            with self._lock:
                orphans, self._handles = self._handles, {}
            log.error("%s: the text engine's process stopped (exit code %s); %d sequences failed; restarting",
                      self.folder, self._proc.returncode, len(orphans))
            for handle in orphans.values():
                self._deliver(handle, ("unavailable", self._down(), self.load_seconds + 1))
            self._replace()
        except Exception:  # whatever stops the replacement, the server says it cannot serve
            log.exception("%s: the text engine's process could not be replaced", self.folder)
            self.failed = True

    def _deliver(self, handle: _Handle, event: tuple) -> None:
        try:
            handle.emit(event)
        except Exception:  # one client's delivery (its loop closed, say) is not every client's
            log.exception("%s: an event could not be delivered", self.folder)

    def _replace(self) -> None:
        """Start a new child in place of the dead one, a few times over; then give up and be unhealthy."""
        for attempt in range(self.restarts):
            try:
                proc, conn = self._spawn()
            except (GenlabError, OSError):  # a model that will not load, or no memory or files left to start one
                log.exception("%s: restart %d of %d failed", self.folder, attempt + 1, self.restarts)
                time.sleep(min(2.0**attempt, 10.0))
                continue
            if self._stopping:  # stopped while it loaded
                proc.kill()
                return
            self._conn.close()
            self._proc, self._conn = proc, conn
            self._reader = self._read_in_thread()
            return
        self.failed = True


def family_lm(folder: Path) -> tuple[object, object]:
    """(LM, tokenizer) through the family's own loader: for a folder that only its family can read."""
    from genlab.serving.folders import load_model

    model = load_model(folder)[0]
    return model.lm, model.tokenizer


def _child(fd: int) -> None:
    """The child's side: load the model, run the engine, and relay messages until told to stop."""
    from genlab.locate import locate
    from genlab.serving.folders import safetensors_folder

    conn = Connection(fd)
    folder, load, options = conn.recv()
    if "OMP_NUM_THREADS" not in os.environ:  # a core is left to the server's process, which streams the tokens
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))
    try:
        lm, tokenizer = locate(load)(safetensors_folder(folder)[0])
    except Exception as err:  # the server names it when it refuses to start
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    sizes: list[int] = []
    outbox: list[tuple] = []
    seqs: dict[int, object] = {}
    lock = threading.Lock()  # the outbox is swapped and sent whole, in order

    def flush() -> None:  # the engine's thread, after each step
        nonlocal sizes, outbox
        with lock:
            if sizes or outbox:
                message, sizes, outbox = (sizes, outbox, engine.depth), [], []
                conn.send(message)

    engine = TextEngine(lm, tokenizer, on_step=lambda size: sizes.append(size), after_step=flush, **options)
    conn.send(("ready",))

    def emitter(key: int) -> Emit:
        def emit(event: tuple) -> None:
            seq = seqs.get(key)
            outbox.append((key, seq.generated if seq is not None else 0, event))
            if event[0] in ("done", "error"):
                seqs.pop(key, None)
        return emit

    try:
        for message in iter(conn.recv, ("stop",)):
            if message[0] == "submit":
                _, key, ids, params, seed = message
                try:
                    seqs[key] = engine.submit(ids, params, seed, emitter(key))
                except queue.Full:
                    with lock:
                        outbox.append((key, 0, ("unavailable", "is busy: its queue is full", 1.0)))
            elif message[0] == "cancel" and (seq := seqs.pop(message[1], None)) is not None:
                seq.cancelled = True
        engine.stop()
    except (EOFError, OSError):  # the server is gone
        engine.stop(drain_seconds=0)

