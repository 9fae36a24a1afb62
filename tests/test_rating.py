"""The pairwise rating page, driven by a real browser (Debian's Chromium through Playwright), and its statistics."""

from __future__ import annotations

import os
import shutil
import sqlite3

import httpx
import pytest
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.evaluation.rating import Ratings, bradley_terry, wilson
from genlab.serving.rating import rating_app

from .conftest import running, tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# a pair is on show: its token is set (the page clears it while a vote is sent) and both images have loaded
LOADED = ("document.body.dataset.token && "
          "[...document.querySelectorAll('.side img')].filter(i => i.complete && i.naturalWidth).length == 2")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_wilson_intervals_and_bradley_terry_order_runs_by_their_votes():
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)
    assert wilson(0, 5)[0] == 0.0 and wilson(0, 5)[1] > 0.4, "no wins in 5 votes is not proof of never winning"
    names = ["a", "b", "c"]
    score = {("a", "b"): 8, ("b", "a"): 2, ("b", "c"): 7, ("c", "b"): 3, ("a", "c"): 9, ("c", "a"): 1}
    strengths = bradley_terry(names, score)
    assert strengths["a"] > strengths["b"] > strengths["c"] and abs(sum(strengths.values())) < 1e-3
    assert bradley_terry(names, {**score, ("a", "c"): 10, ("c", "a"): 0})["a"] < 10, "an unbeaten run stays finite"


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="the rating page's browser test did not run: no Chromium on this machine "
                           "(install it with `apt-get install chromium`, as .ci/run does)")
def test_raters_vote_in_a_real_browser_blind_and_every_vote_names_its_two_items(tmp_path, tiny_run):
    from playwright.sync_api import sync_playwright

    untrained = genlab.fit(None, overrides=tiny("train.max_steps=1"), out=tmp_path / "untrained")
    ratings = Ratings.create([tiny_run.path, untrained.path], tmp_path / "rating", n=4)
    assert sorted(p.name for p in (tmp_path / "rating/samples/untrained").iterdir()) == [f"{i}.png" for i in range(4)]
    with running(rating_app(ratings, seed=0, admin_key="boss")) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(url)
        page.fill("#rater", "ada")
        page.locator("#rater").dispatch_event("change")
        page.click("h1")  # out of the name field: arrow keys there edit the name, not vote
        shown = []
        for action in ("ArrowLeft", "ArrowLeft", "#vote-same", "#vote-same", "ArrowRight", "#vote-right"):
            page.wait_for_function(LOADED)
            shown.append(page.evaluate("document.body.dataset.token"))
            assert "tiny" not in page.content() and "untrained" not in page.content(), "the page never names a run"
            page.keyboard.press(action) if action.startswith("Arrow") else page.click(action)
            page.wait_for_function(f"document.getElementById('count').textContent == '{len(shown)}'")
        browser.close()
        with sqlite3.connect(tmp_path / "rating/ratings.sqlite") as db:
            votes = db.execute("select rater, choice, left_run, right_run, left_item from votes order by id").fetchall()
        assert [v[1] for v in votes] == ["left", "left", "same", "same", "right", "right"]
        assert {v[0] for v in votes} == {"ada"} and all(v[2] != v[3] and 0 <= v[4] < 4 for v in votes)
        assert {v[2] for v in votes} == {tiny_run.path.name, "untrained"}, "sides are drawn at random"
        assert httpx.get(f"{url}/api/results").status_code == 403, "raters never see the standings"
        results = httpx.get(f"{url}/api/results", headers={"Authorization": "Bearer boss"}).json()
        assert results["votes"] == 6 and results["pairs"][0]["votes"] == 6

        stale = httpx.post(f"{url}/api/vote", json={"token": shown[0], "choice": "left"})  # voted already
        assert stale.status_code == 404 and "already voted" in stale.text
        token = httpx.get(f"{url}/api/pair").json()["token"]
        assert httpx.post(f"{url}/api/vote", json={"token": token, "choice": "best"}).status_code == 422
        assert httpx.get(f"{url}/item/{token}/..%2F..%2Fratings.sqlite").status_code in (404, 422)
        served = httpx.get(f"{url}/item/{token}/left").headers
        assert served["content-type"] == "image/png"
        assert not {"etag", "last-modified"} & set(served), "no validator or timestamp tells the runs apart"

    shown = CliRunner().invoke(app, ["ratings", str(tmp_path / "rating")])
    assert shown.exit_code == 0 and "6 votes" in shown.output and "95% interval" in shown.output
    again = Ratings.create([tiny_run.path, untrained.path], tmp_path / "rating", n=4)  # a second session
    assert again.results()["votes"] == 6, "earlier votes and drawn items are kept"
    impostor = genlab.fit(None, overrides=tiny("train.max_steps=2"), out=tmp_path / "other" / "untrained")
    with pytest.raises(genlab.GenlabError, match="holds votes on another run named 'untrained'"):
        Ratings.create([tiny_run.path, impostor.path], tmp_path / "rating", n=4)


def test_rating_mistakes_are_one_line(tmp_path, tiny_run, runs):
    for args, message in (([str(tiny_run.path)], "at least two runs"),
                          ([str(tiny_run.path), str(runs["lm"].path)], "the runs make image and text"),
                          ([str(tiny_run.path), str(tmp_path / "nope")], "nope")):
        result = CliRunner().invoke(app, ["rate", *args, "--out", str(tmp_path / "r")])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["ratings", str(tmp_path)])
    assert result.exit_code == 1 and "holds no ratings.sqlite" in result.output
