"""Pairwise human rating: blind A/B votes between runs' samples, kept in SQLite, scored with intervals.

    genlab rate RUN_A RUN_B ... --out DIR   -> DIR/ratings.sqlite, DIR/samples/, a page to vote on
    genlab ratings DIR                      -> win rates with Wilson 95% intervals, Bradley-Terry strengths

Samples are drawn once per run (seeds 0..n-1, the run's eval sampling) and kept, so every rater
judges the same items and each vote names the two items it compared. A pair is two items drawn from all
runs' items pooled, so it may hold one run twice: which items appear together then says nothing of which run
made them (a rater who recognises items cannot sort them into runs). The price: with k runs of one size,
about 1/k of the votes compare a run with itself; they are kept apart from the standings, as a check of the
raters. The page never names the runs. A vote of "same" counts half a win to each.

Runs drawn from text (text to image) draw each of their items for a prompt: held-out captions, two items each,
item i for prompt i // 2. A pair is then two items of one prompt, pooled across runs as above, and the page shows
the prompt beside them: the rater judges what was asked for, not two unrelated pictures.
"""

from __future__ import annotations

import hashlib
import math
import random
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError

DATABASE = "ratings.sqlite"
SKIPS = """
create table if not exists skips (id integer primary key, at text not null, rater text not null,
                                  left_run text not null, left_item integer not null,
                                  right_run text not null, right_item integer not null);
"""
SCHEMA = """
create table if not exists runs (name text primary key, path text not null, modality text not null,
                                 items integer not null, identity text);
create table if not exists votes (id integer primary key, at text not null, rater text not null,
                                  left_run text not null, left_item integer not null,
                                  right_run text not null, right_item integer not null,
                                  choice text not null check (choice in ('left', 'right', 'same')));
""" + SKIPS
PROMPTS = "create table if not exists prompts (item integer primary key, prompt text not null);"
PER_PROMPT = 2  # items drawn per prompt and run: a pair may hold one run twice for one prompt
CHOICES = ("left", "right", "same")
SKIP = "skip"  # a pair passed over: kept in its own table, counted toward the rater's quota
BATCH = 64  # samples drawn per call


class Ratings:
    """A rating folder: the runs, their drawn samples (samples/<run>/<i>.png or .txt) and the votes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / DATABASE).is_file():
            raise GenlabError(f"{self.folder}: holds no {DATABASE}; `genlab rate RUN... --out {self.folder}` makes one")
        with closing(self._connect()) as db:
            rows = db.execute("select name, path, modality, items from runs order by rowid").fetchall()
            db.execute(PROMPTS)  # a folder from before prompts were kept has none
            self.prompts = [p for (p,) in db.execute("select prompt from prompts order by item")]
        self.runs = {name: {"path": path, "modality": modality, "items": items} for name, path, modality, items in rows}

    @classmethod
    def create(cls, runs: list[str | Path], folder: str | Path, n: int = 64) -> Ratings:
        """Draw `n` samples from each run into `folder` (kept if already drawn) and open its vote database."""
        import torch

        from genlab.config import sampling_options
        from genlab.run import Run

        if len(runs) < 2:
            raise GenlabError("rate: name at least two runs to compare")
        folder = Path(folder)
        loaded = [Run(path) for path in runs]
        names = [run.path.name for run in loaded]
        if len(set(names)) != len(names):
            raise GenlabError(f"rate: two runs share a folder name ({', '.join(names)}); each needs its own")
        kinds = {run.model.media.name for run in loaded}
        if len(kinds) > 1:
            raise GenlabError(f"rate: the runs make {' and '.join(sorted(kinds))}; rate runs of one kind together")
        prompted = {run.model.takes_prompts for run in loaded}
        if len(prompted) > 1:
            raise GenlabError("rate: some of the runs draw from prompts and some do not; rate runs drawn from text "
                              "together")
        prompts = _prompts(loaded[0], n) if prompted == {True} else []
        folder.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(folder / DATABASE)) as db, db:
            db.executescript(SCHEMA + PROMPTS)
            kept = [p for (p,) in db.execute("select prompt from prompts order by item")]
            if kept and kept != prompts and db.execute("select 1 from votes limit 1").fetchone():
                raise GenlabError(f"rate: {folder} holds votes on other prompts; rate these runs in another --out "
                                  "folder")
            db.execute("delete from prompts")
            db.executemany("insert into prompts values (?, ?)", enumerate(prompts))
            if "identity" not in {row[1] for row in db.execute("pragma table_info(runs)")}:  # a folder from before
                db.execute("alter table runs add column identity text")
            known = {name: (items, identity) for name, items, identity in
                     db.execute("select name, items, identity from runs").fetchall()}
            for name, run in zip(names, loaded, strict=True):
                identity = run_identity(run)
                if name in known and known[name][1] != identity and _voted_on(db, name):
                    raise GenlabError(f"rate: {folder} holds votes on another run named {name!r}; rate this one "
                                      "in another --out folder (its samples would mix with the votes' items)")
                if known.get(name) == (n, identity) and kept == prompts:
                    continue  # drawn before from this very model: votes already name these items
                options = sampling_options(run.config.model.family, run.model.sampling)  # the run's own
                for start in range(0, n, BATCH):  # one generator per item: item i is what seed i draws alone
                    seeds = range(start, min(n, start + BATCH))
                    asked = {"prompt": [prompts[i // PER_PROMPT] for i in seeds]} if prompts else {}
                    drawn = run.model.sample(len(seeds), generator=[torch.Generator().manual_seed(i) for i in seeds],
                                             **options, **asked)
                    for j, i in enumerate(seeds):
                        media = run.model.media
                        media.save(drawn[j : j + 1], folder / "samples" / name / f"{i}{media.suffix}")
                db.execute("insert or replace into runs values (?, ?, ?, ?, ?)",
                           (name, str(run.path.resolve()), run.model.media.name, n, identity))
        return cls(folder)

    def pair(self, rng: random.Random) -> dict[str, Any]:
        """Two different items drawn uniformly from every run's items together (one run twice, at times), in
        random order: item by item, not run by run, so neither a run's size nor the pairing marks its items."""
        def located(k: int) -> tuple[str, int]:
            for name, run in self.runs.items():
                if k < run["items"]:
                    return name, k
                k -= run["items"]
            raise AssertionError("drawn past the last item")

        if self.prompts:  # two items of one prompt, from every run's items of it pooled
            j = rng.randrange(len(self.prompts))
            pool = [(name, i) for name in self.runs for i in range(j * PER_PROMPT, (j + 1) * PER_PROMPT)]
            (left, left_item), (right, right_item) = rng.sample(pool, 2)
            return {"left_run": left, "left_item": left_item, "right_run": right, "right_item": right_item,
                    "asked": self.prompts[j]}
        (left, left_item), (right, right_item) = map(located, rng.sample(range(self._items()), 2))
        return {"left_run": left, "left_item": left_item, "right_run": right, "right_item": right_item}

    def item(self, run: str, index: int) -> Path:
        """The file of one drawn sample; the name and index come from a pair this folder made, never a request."""
        return next((self.folder / "samples" / run).glob(f"{index}.*"))

    def vote(self, pair: dict[str, Any], choice: str, rater: str) -> None:
        """Record a vote on `pair`, or with choice "skip" that the rater passed it over."""
        if choice not in (*CHOICES, SKIP):
            raise GenlabError(f"choice: {choice!r} is not one of {', '.join((*CHOICES, SKIP))}")
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        items = (pair["left_run"], pair["left_item"], pair["right_run"], pair["right_item"])
        with closing(self._connect()) as db, db:
            if choice == SKIP:
                db.execute(SKIPS)  # a folder from before skips were kept
                db.execute("insert into skips (at, rater, left_run, left_item, right_run, right_item) "
                           "values (?, ?, ?, ?, ?, ?)", (at, rater[:100], *items))
            else:
                db.execute("insert into votes (at, rater, left_run, left_item, right_run, right_item, choice) "
                           "values (?, ?, ?, ?, ?, ?, ?)", (at, rater[:100], *items, choice))

    def answered(self, rater: str) -> int:
        """How many pairs `rater` has voted on or skipped, in this folder's every session."""
        with closing(self._connect()) as db:
            votes = db.execute("select count(*) from votes where rater = ?", (rater[:100],)).fetchone()[0]
            return votes + _skips(db, rater[:100])

    def results(self) -> dict[str, Any]:
        """Per pair of runs: wins, losses, same, and the win rate with its Wilson 95% interval; per run, a
        Bradley-Terry strength (log scale, mean 0) fitted to every vote across runs; votes within a run apart."""
        with closing(self._connect()) as db:
            votes = db.execute("select left_run, right_run, choice from votes").fetchall()
            skips = _skips(db)
        names = list(self.runs)
        score = {(a, b): 0.0 for a in names for b in names if a != b}  # a's wins over b, a "same" counting half
        within = [choice for left, right, choice in votes if left == right]
        for left, right, choice in votes:
            if left == right:
                continue
            won = {"left": 1.0, "right": 0.0, "same": 0.5}[choice]
            score[left, right] += won
            score[right, left] += 1 - won
        pairs = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                games = score[a, b] + score[b, a]
                if games:
                    low, high = wilson(score[a, b], games)
                    pairs.append({"a": a, "b": b, "votes": int(games), "a_wins": score[a, b],
                                  "a_win_rate": score[a, b] / games, "interval": [low, high]})
        strengths = bradley_terry(names, score)
        return {"votes": len(votes), "skips": skips, "pairs": pairs,
                # a run against itself, where an honest rater says "same" or splits left and right evenly
                "within_run": {"votes": len(within), "same": within.count("same")},
                "runs": sorted(({"run": n, "strength": strengths[n]} for n in names), key=lambda r: -r["strength"])}

    def _items(self) -> int:
        return sum(run["items"] for run in self.runs.values())

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.folder / DATABASE, timeout=30)


def _prompts(run: Any, n: int) -> list[str]:
    """What runs drawn from text are rated on: n / PER_PROMPT held-out captions of the first run's data (its
    model's example prompts when its data has none)."""
    from genlab.data.sources import load_dataset

    if n % PER_PROMPT:
        raise GenlabError(f"rate: --n {n}; runs drawn from prompts draw {PER_PROMPT} items per prompt, so --n must "
                          f"be a multiple of {PER_PROMPT}")
    dataset = load_dataset(run.config.data, in_memory=True)
    captions = dataset.held_out.captions or run.model.preview_captions or [""]
    return [captions[j % len(captions)] for j in range(n // PER_PROMPT)]


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest near 0 and 1 and for few votes, unlike p +- z*se."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(names: list[str], score: dict[tuple[str, str], float], iterations: int = 200) -> dict[str, float]:
    """Strengths p with P(a beats b) = p_a / (p_a + p_b), by Hunter's MM updates; half a win each way is added
    to every pair, so a run that never lost stays finite. Returned as log-strengths centred on 0."""
    wins = {pair: s + 0.5 for pair, s in score.items()}
    p = dict.fromkeys(names, 1.0)
    for _ in range(iterations):
        for a in names:
            games = sum((wins[a, b] + wins[b, a]) / (p[a] + p[b]) for b in names if b != a)
            p[a] = sum(wins[a, b] for b in names if b != a) / games
        mean = sum(math.log(v) for v in p.values()) / len(p)
        p = {n: math.exp(math.log(v) - mean) for n, v in p.items()}
    return {n: round(math.log(v), 4) for n, v in p.items()}


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The results as lines for the terminal."""
    within = results.get("within_run", {"votes": 0})
    lines = [f"{results['votes']} votes, {results.get('skips', 0)} skipped"]
    lines += [f"{r['run']:<24} strength {r['strength']:+.3f}" for r in results["runs"]]
    lines += [f"{p['a']} over {p['b']}: {p['a_win_rate']:.0%} of {p['votes']} "
              f"(95% interval {p['interval'][0]:.0%} to {p['interval'][1]:.0%})" for p in results["pairs"]]
    if within["votes"]:
        lines.append(f"{within['votes']} votes compared a run with itself (a blind check): "
                     f"{within['same'] / within['votes']:.0%} said same")
    return lines


def run_identity(run: Any) -> str:
    """What the drawn samples were drawn from: the run's folder and its model files' names, sizes and times, so
    a new run under an old run's name is told apart."""
    files = sorted(p for p in run.paths.model.rglob("*") if p.is_file())
    parts = [str(run.path.resolve()), *(f"{p.relative_to(run.paths.model)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                        for p in files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _skips(db: sqlite3.Connection, rater: str | None = None) -> int:
    """Skipped pairs (of one rater, or all); 0 in a folder from before skips were kept."""
    if db.execute("select 1 from sqlite_master where type = 'table' and name = 'skips'").fetchone() is None:
        return 0
    if rater is None:
        return db.execute("select count(*) from skips").fetchone()[0]
    return db.execute("select count(*) from skips where rater = ?", (rater,)).fetchone()[0]


def _voted_on(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("select 1 from votes where left_run = ? or right_run = ? limit 1", (name, name)).fetchone() \
        is not None
