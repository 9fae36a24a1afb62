"""Pairwise human rating: blind A/B votes between runs' samples, kept in SQLite, scored with intervals.

    genlab rate RUN_A RUN_B ... --out DIR   -> DIR/ratings.sqlite, DIR/samples/, a page to vote on
    genlab ratings DIR                      -> win rates with Wilson 95% intervals, Bradley-Terry strengths

Samples are drawn once per run (seeds 0..n-1, the run's eval sampling) and kept, so every rater
judges the same items and each vote names the two items it compared. Which run shows on the left is
random for each pair, and the page never names the runs. A vote of "same" counts half a win to each.
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
SCHEMA = """
create table if not exists runs (name text primary key, path text not null, modality text not null,
                                 items integer not null, identity text);
create table if not exists votes (id integer primary key, at text not null, rater text not null,
                                  left_run text not null, left_item integer not null,
                                  right_run text not null, right_item integer not null,
                                  choice text not null check (choice in ('left', 'right', 'same')));
"""
CHOICES = ("left", "right", "same")
BATCH = 64  # samples drawn per call


class Ratings:
    """A rating folder: the runs, their drawn samples (samples/<run>/<i>.png or .txt) and the votes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / DATABASE).is_file():
            raise GenlabError(f"{self.folder}: holds no {DATABASE}; `genlab rate RUN... --out {self.folder}` makes one")
        with closing(self._connect()) as db:
            rows = db.execute("select name, path, modality, items from runs order by rowid").fetchall()
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
        folder.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(folder / DATABASE)) as db, db:
            db.executescript(SCHEMA)
            if "identity" not in {row[1] for row in db.execute("pragma table_info(runs)")}:  # a folder from before
                db.execute("alter table runs add column identity text")
            known = {name: (items, identity) for name, items, identity in
                     db.execute("select name, items, identity from runs").fetchall()}
            for name, run in zip(names, loaded, strict=True):
                identity = run_identity(run)
                if name in known and known[name][1] != identity and _voted_on(db, name):
                    raise GenlabError(f"rate: {folder} holds votes on another run named {name!r}; rate this one "
                                      "in another --out folder (its samples would mix with the votes' items)")
                if known.get(name) == (n, identity):
                    continue  # drawn before from this very model: votes already name these items
                options = sampling_options(run.config.model.family, run.model.sampling)  # the run's own
                for start in range(0, n, BATCH):  # one generator per item: item i is what seed i draws alone
                    seeds = range(start, min(n, start + BATCH))
                    drawn = run.model.sample(len(seeds), generator=[torch.Generator().manual_seed(i) for i in seeds],
                                             **options)
                    for j, i in enumerate(seeds):
                        media = run.model.media
                        media.save(drawn[j : j + 1], folder / "samples" / name / f"{i}{media.suffix}")
                db.execute("insert or replace into runs values (?, ?, ?, ?, ?)",
                           (name, str(run.path.resolve()), run.model.media.name, n, identity))
        return cls(folder)

    def pair(self, rng: random.Random) -> dict[str, Any]:
        """Two different runs, a random item of each, on random sides."""
        left, right = rng.sample(list(self.runs), 2)
        return {"left_run": left, "left_item": rng.randrange(self.runs[left]["items"]),
                "right_run": right, "right_item": rng.randrange(self.runs[right]["items"])}

    def item(self, run: str, index: int) -> Path:
        """The file of one drawn sample; the name and index come from a pair this folder made, never a request."""
        return next((self.folder / "samples" / run).glob(f"{index}.*"))

    def vote(self, pair: dict[str, Any], choice: str, rater: str) -> None:
        if choice not in CHOICES:
            raise GenlabError(f"choice: {choice!r} is not one of {', '.join(CHOICES)}")
        with closing(self._connect()) as db, db:
            db.execute("insert into votes (at, rater, left_run, left_item, right_run, right_item, choice) "
                       "values (?, ?, ?, ?, ?, ?, ?)",
                       (datetime.now(timezone.utc).isoformat(timespec="seconds"), rater[:100], pair["left_run"],
                        pair["left_item"], pair["right_run"], pair["right_item"], choice))

    def results(self) -> dict[str, Any]:
        """Per pair of runs: wins, losses, same, and the win rate with its Wilson 95% interval; per run, a
        Bradley-Terry strength (log scale, mean 0) fitted to every vote."""
        with closing(self._connect()) as db:
            votes = db.execute("select left_run, right_run, choice from votes").fetchall()
        names = list(self.runs)
        score = {(a, b): 0.0 for a in names for b in names if a != b}  # a's wins over b, a "same" counting half
        for left, right, choice in votes:
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
        return {"votes": len(votes), "pairs": pairs,
                "runs": sorted(({"run": n, "strength": strengths[n]} for n in names), key=lambda r: -r["strength"])}

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.folder / DATABASE, timeout=30)


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
    lines = [f"{results['votes']} votes"]
    lines += [f"{r['run']:<24} strength {r['strength']:+.3f}" for r in results["runs"]]
    lines += [f"{p['a']} over {p['b']}: {p['a_win_rate']:.0%} of {p['votes']} "
              f"(95% interval {p['interval'][0]:.0%} to {p['interval'][1]:.0%})" for p in results["pairs"]]
    return lines


def run_identity(run: Any) -> str:
    """What the drawn samples were drawn from: the run's folder and its model files' names, sizes and times, so
    a new run under an old run's name is told apart."""
    files = sorted(p for p in run.paths.model.rglob("*") if p.is_file())
    parts = [str(run.path.resolve()), *(f"{p.relative_to(run.paths.model)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                        for p in files)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _voted_on(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("select 1 from votes where left_run = ? or right_run = ? limit 1", (name, name)).fetchone() \
        is not None
