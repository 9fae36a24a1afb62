"""The rating page: raters see two samples side by side, blind, and say which is better (or the same).

    GET  /                  the page (keys: left arrow, right arrow, down arrow for "same")
    GET  /api/pair          a new pair: an opaque token and the two items' URLs
    GET  /item/{token}/{side}  one item of a pending pair (a PNG or text), by token, never by run name
    POST /api/vote          {token, choice: left|right|same, rater}
    GET  /api/results       win rates and strengths (Ratings.results), for the operator's admin key only

Raters learn nothing but the two items: items are sent without validators or timestamps (an ETag or a
Last-Modified from the file would tell the runs apart, as they are drawn run by run), and the standings
stay behind the admin key.
"""

from __future__ import annotations

import hmac
import mimetypes
import random
import secrets
from collections import OrderedDict
from typing import Literal

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from genlab.evaluation.rating import Ratings

PENDING = 10_000  # pairs handed out and not yet voted on, oldest forgotten first


class Vote(BaseModel):
    token: str = Field(max_length=64)
    choice: Literal["left", "right", "same"]
    rater: str = Field("anonymous", min_length=1, max_length=100)


def rating_app(ratings: Ratings, seed: int | None = None, admin_key: str | None = None) -> FastAPI:
    app = FastAPI(title="genlab rating", docs_url=None, redoc_url=None)
    rng = random.Random(seed)
    pending: OrderedDict[str, dict] = OrderedDict()

    def pending_pair(token: str) -> dict:
        if token not in pending:
            raise HTTPException(404, "unknown or already voted pair; ask /api/pair for a new one")
        return pending[token]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/pair")
    def new_pair() -> dict:
        token = secrets.token_urlsafe(16)
        pair = ratings.pair(rng)
        pending[token] = pair
        while len(pending) > PENDING:
            pending.popitem(last=False)
        kind = ratings.runs[pair["left_run"]]["modality"]  # the page shows an image, or the file as text
        return {"token": token, "kind": kind, "left": f"/item/{token}/left", "right": f"/item/{token}/right"}

    @app.get("/item/{token}/{side}")
    def item(token: str, side: Literal["left", "right"]) -> Response:
        pair = pending_pair(token)
        path = ratings.item(pair[f"{side}_run"], pair[f"{side}_item"])
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), media_type=kind, headers={"Cache-Control": "no-store"})

    @app.post("/api/vote", status_code=204)
    def vote(body: Vote) -> None:
        pair = pending.pop(body.token, None)  # one vote per pair, even from two tabs at once
        if pair is None:
            raise HTTPException(404, "unknown or already voted pair; ask /api/pair for a new one")
        ratings.vote(pair, body.choice, body.rater)

    @app.get("/api/results")
    def results(authorization: str | None = Header(None)) -> dict:
        sent = (authorization or "").removeprefix("Bearer ").strip().encode("utf-8", "surrogateescape")
        if admin_key is None or not hmac.compare_digest(sent, admin_key.encode()):
            raise HTTPException(403, "results are for the operator: `genlab ratings DIR`, or this route with "
                                     "the --admin-key given to `genlab rate`")
        return ratings.results()

    return app


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
<p>Rater: <input id="rater" size="16"> &middot; votes this session: <span id="count">0</span></p>
<div class="pair"><div class="side" id="left"></div><div class="side" id="right"></div></div>
<button id="vote-left">Left is better (&larr;)</button>
<button id="vote-same">Same (&darr;)</button>
<button id="vote-right">Right is better (&rarr;)</button>
<script>
let token = null, count = 0;
const rater = document.getElementById("rater");
rater.value = localStorage.getItem("rater") || "anonymous";
rater.onchange = () => localStorage.setItem("rater", rater.value);
async function show(side, url, kind) {
  const box = document.getElementById(side);
  if (kind === "image") { box.innerHTML = `<img alt="${side}" src="${url}">`; }
  else { const pre = document.createElement("pre"); pre.textContent = await (await fetch(url)).text();
         box.replaceChildren(pre); }
}
async function next() {
  const pair = await (await fetch("/api/pair")).json();
  token = pair.token;
  await Promise.all([show("left", pair.left, pair.kind), show("right", pair.right, pair.kind)]);
  document.body.dataset.token = token;
}
async function vote(choice) {
  if (!token) return;
  const sent = token; token = null;
  delete document.body.dataset.token;  // no pair on show until the next one has loaded
  const r = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({token: sent, choice, rater: rater.value || "anonymous"})});
  if (r.ok) document.getElementById("count").textContent = ++count;
  await next();
}
document.getElementById("vote-left").onclick = () => vote("left");
document.getElementById("vote-right").onclick = () => vote("right");
document.getElementById("vote-same").onclick = () => vote("same");
document.addEventListener("keydown", e => {
  if (e.target === rater) return;
  const choice = {ArrowLeft: "left", ArrowRight: "right", ArrowDown: "same"}[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});
next();
</script>
"""
