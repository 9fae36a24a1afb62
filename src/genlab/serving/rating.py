"""The rating page: raters see two samples side by side, blind, and say which is better (or the same).

    GET  /                  the page (keys: left arrow, right arrow, down arrow for "same", up arrow to skip)
    POST /api/session       {rater}: a session, as an HttpOnly SameSite=Strict cookie bound to that name
    GET  /api/pair          the session's pending pair: an opaque token, the two items' URLs (and their prompt)
    GET  /item/{token}/{side}  one item of the pending pair (a PNG or text), never by run name
    POST /api/vote          {token, choice: left|right|same|skip}; the rater is the session's
    GET  /api/results       win rates and strengths (Ratings.results), for the operator's admin key only

A rater cannot pick their pairs: pair k of a rater is drawn from a seed that only the server knows, for that
name and k, so asking again, reloading or opening a new session under the same name shows the same pair until
it is voted on or skipped (a skip is recorded, and both count toward the rater's --quota). Nor can a rater sort
the items into runs: a pair is two items drawn from all runs' items pooled, so it may hold one run twice, and
which items appear together is independent of which run made them; a rater who recognises every item still
learns nothing of the runs. Images are also re-encoded on every serving with ±1 in a random subset of pixel
values, so hashing the bytes or the decoded pixels does not even link two showings of an item (a fuzzy match
would: that is why the pooled draw, not the noise, is the guarantee). Items are sent without validators or
timestamps, and the standings stay behind the admin key.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import mimetypes
import random
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from fastapi import Cookie, FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from genlab.errors import GenlabError
from genlab.evaluation.rating import Ratings

COOKIE = "genlab_rating"
QUOTA = 200  # pairs a rater answers (votes and skips), unless `genlab rate --quota` says otherwise
SESSIONS = 1000  # sessions held at once; a new one makes room only by forgetting one idle for IDLE seconds
IDLE = 30 * 60


class Start(BaseModel):
    rater: str = Field(min_length=1, max_length=100, pattern=r"\S")


class Vote(BaseModel):
    token: str = Field(max_length=64)
    choice: Literal["left", "right", "same", "skip"]


def rating_app(ratings: Ratings, seed: int | None = None, admin_key: str | None = None, quota: int = QUOTA,
               sessions: int = SESSIONS) -> FastAPI:
    """The rating page over `ratings`; `seed` fixes the raters' pair sequences (tests), else they are secret."""
    if admin_key is not None and not admin_key.strip():
        raise GenlabError("admin key: empty; give a key to read /api/results, or none to keep the results "
                          "for `genlab ratings`")
    if quota < 1:
        raise GenlabError(f"quota: {quota}; a rater needs at least one pair")
    app = FastAPI(title="genlab rating", docs_url=None, redoc_url=None)
    secret = secrets.token_bytes(32) if seed is None else hashlib.sha256(f"genlab rating {seed}".encode()).digest()
    lock = threading.Lock()  # sessions, answered counts and votes change together, from the server's threads
    open_sessions: OrderedDict[str, dict] = OrderedDict()  # cookie -> {rater, seen}, least recently seen first
    answered: dict[str, int] = {}  # rater -> pairs voted on or skipped, from the database then counted here

    def keyed(*parts: object) -> bytes:
        return hmac.new(secret, "\0".join(map(str, parts)).encode(), hashlib.sha256).digest()

    def pending(cookie: str | None) -> tuple[str, str, dict]:
        """The session's rater, the token of their pending pair and the pair; the caller holds the lock."""
        session = open_sessions.get(cookie or "")
        if session is None:
            raise HTTPException(401, "no rating session (or it was closed after a long idle): POST /api/session "
                                     "{rater} first; the page asks for your name")
        session["seen"] = time.monotonic()
        open_sessions.move_to_end(cookie)
        rater = session["rater"]
        if rater not in answered:
            answered[rater] = ratings.answered(rater)
        k = answered[rater]
        if k >= quota:
            raise HTTPException(429, f"rater {rater!r} has answered {k} pairs, this page's quota of {quota}; "
                                     "thank you")
        # pair k of this rater: the same for every session of theirs until it is answered, secret until shown
        return rater, keyed("token", rater, k).hex()[:32], ratings.pair(random.Random(keyed("pair", rater, k)))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.post("/api/session")
    def start(body: Start) -> JSONResponse:
        rater = body.rater.strip()
        with lock:
            now = time.monotonic()
            while len(open_sessions) >= sessions:
                oldest = next(iter(open_sessions.values()))
                if now - oldest["seen"] < IDLE:
                    raise HTTPException(503, f"the rating page holds {sessions} raters' sessions, all in use; "
                                             "try again later")
                open_sessions.popitem(last=False)
            cookie = secrets.token_urlsafe(24)
            open_sessions[cookie] = {"rater": rater, "seen": now}
            if rater not in answered:
                answered[rater] = ratings.answered(rater)
            left = quota - answered[rater]
        response = JSONResponse({"rater": rater, "quota": quota, "left": max(left, 0)})
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/api/pair")
    def next_pair(session: str | None = Cookie(None, alias=COOKIE)) -> dict:
        with lock:
            rater, token, pair = pending(session)
            left = quota - answered[rater]
        kind = next(iter(ratings.runs.values()))["modality"]  # one kind per folder: an image, or the file as text
        return {"token": token, "kind": kind, "left": f"/item/{token}/left", "right": f"/item/{token}/right",
                "rater": rater, "remaining": left, "asked": pair.get("asked")}

    @app.get("/item/{token}/{side}")
    def item(token: str, side: Literal["left", "right"], session: str | None = Cookie(None, alias=COOKIE)) -> Response:
        with lock:
            _, current, pair = pending(session)
        if not hmac.compare_digest(token.encode(), current.encode()):
            raise HTTPException(404, "not your pending pair (answered already?); ask /api/pair for it")
        path = ratings.item(pair[f"{side}_run"], pair[f"{side}_item"])
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        content = noisy_png(path) if path.suffix.lower() == ".png" else path.read_bytes()
        return Response(content, media_type=kind, headers={"Cache-Control": "no-store"})

    @app.post("/api/vote", status_code=204)
    def vote(body: Vote, session: str | None = Cookie(None, alias=COOKIE)) -> None:
        with lock:  # one answer per pair, even from two tabs at once
            rater, current, pair = pending(session)
            if not hmac.compare_digest(body.token.encode(), current.encode()):
                raise HTTPException(404, "unknown or already voted pair; ask /api/pair for the next one")
            ratings.vote(pair, body.choice, rater)
            answered[rater] += 1

    @app.get("/api/results")
    def results(authorization: str | None = Header(None)) -> dict:
        sent = (authorization or "").removeprefix("Bearer ").strip().encode("utf-8", "surrogateescape")
        if admin_key is None or not hmac.compare_digest(sent, admin_key.encode()):
            raise HTTPException(403, "results are for the operator: `genlab ratings DIR`, or this route with "
                                     "the --admin-key given to `genlab rate`")
        return ratings.results()

    return app


def noisy_png(path: Path) -> bytes:
    """The image with ±1 in about a quarter of its values, drawn afresh for every serving: invisible, and no
    two servings share their bytes or their pixels."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        keep = image.mode in ("L", "RGB", "RGBA")
        alpha = "A" in image.getbands() or "transparency" in image.info
        image = image if keep else image.convert("RGBA" if alpha else "RGB")
        pixels = np.asarray(image, dtype=np.int16)
    channels = pixels.shape[-1] if pixels.ndim == 3 else 1
    rng = np.random.default_rng(secrets.randbits(128))
    noise = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 0, 1], dtype=np.int16), size=pixels.shape)
    values = noise.reshape(-1, channels)  # a view: one row a pixel
    values[rng.integers(len(values)), 0] = 1  # at least one value changed, even in a tiny image
    if channels == 4:
        values[:, 3] = 0  # transparency as drawn
    # stay in range by turning the step around, not by clipping, which would leave 0 and 255 as they are
    noise = np.where(pixels + noise > 255, -1, np.where(pixels + noise < 0, 1, noise))
    out = io.BytesIO()
    Image.fromarray((pixels + noise).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


PAGE = """<!doctype html><meta charset="utf-8"><title>Which is better?</title>
<style>
body{font-family:sans-serif;margin:2em;text-align:center}
.pair{display:flex;gap:2em;justify-content:center;margin:1em}
.side{border:1px solid #ccc;padding:1em;min-width:260px}
.side img{width:256px;height:256px;image-rendering:pixelated}
.side pre{text-align:left;white-space:pre-wrap;max-width:480px}
button{font-size:1.1em;margin:0.3em;padding:0.4em 1em}
</style>
<h1>Which sample is better?</h1>
<form id="start">Your name: <input id="rater" size="16" maxlength="100" required> <button>Start rating</button></form>
<p id="status"><span id="who"></span> votes this visit: <span id="count">0</span> &middot;
   pairs left: <span id="remaining">?</span></p>
<p id="message"></p>
<p id="asked"></p>
<div class="pair"><div class="side" id="left"></div><div class="side" id="right"></div></div>
<button id="vote-left">Left is better (&larr;)</button>
<button id="vote-same">Same (&darr;)</button>
<button id="vote-right">Right is better (&rarr;)</button>
<button id="skip">Skip (&uarr;)</button>
<script>
let token = null, count = 0;
const rater = document.getElementById("rater"), message = document.getElementById("message");
rater.value = localStorage.getItem("rater") || "";
async function show(side, url, kind) {
  const box = document.getElementById(side);
  if (kind === "image") { box.innerHTML = `<img alt="${side}" src="${url}">`; }
  else { const pre = document.createElement("pre"); pre.textContent = await (await fetch(url)).text();
         box.replaceChildren(pre); }
}
async function refused(r) {
  const detail = (await r.json().catch(() => ({}))).detail;
  message.textContent = r.status === 401 ? "Type your name and start rating."
                      : typeof detail === "string" ? detail : `refused (${r.status})`;
  document.getElementById("left").replaceChildren(); document.getElementById("right").replaceChildren();
}
async function next() {
  const r = await fetch("/api/pair");
  if (!r.ok) { await refused(r); return; }
  const pair = await r.json();
  message.textContent = "";
  document.getElementById("who").textContent = `Rating as ${pair.rater};`;
  document.getElementById("remaining").textContent = pair.remaining;
  token = pair.token;
  document.getElementById("asked").textContent = pair.asked ? `Asked for: “${pair.asked}”` : "";
  await Promise.all([show("left", pair.left, pair.kind), show("right", pair.right, pair.kind)]);
  document.body.dataset.token = token;
}
document.getElementById("start").onsubmit = async e => {
  e.preventDefault();
  localStorage.setItem("rater", rater.value);
  const r = await fetch("/api/session", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({rater: rater.value})});
  if (r.ok) { rater.blur(); await next(); } else { await refused(r); }
};
async function vote(choice) {
  if (!token) return;
  const sent = token; token = null;
  delete document.body.dataset.token;  // no pair on show until the next one has loaded
  const r = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({token: sent, choice})});
  if (r.ok && choice !== "skip") document.getElementById("count").textContent = ++count;
  await next();
}
document.getElementById("vote-left").onclick = () => vote("left");
document.getElementById("vote-right").onclick = () => vote("right");
document.getElementById("vote-same").onclick = () => vote("same");
document.getElementById("skip").onclick = () => vote("skip");
document.addEventListener("keydown", e => {
  if (e.target === rater) return;
  const choice = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "same", ArrowUp: "skip"}[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});
next();
</script>
"""
