"""Near duplicates with one answer: clusters are connected components over ids from the sorted source, so
chains end in one cluster, the file order only changes which document represents a cluster, candidates are
verified against exact Jaccard, and image hashes match exactly what comparing every pair would."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np

from genlab.config.prepare import Deduplicate
from genlab.prepare import near, prepare
from genlab.prepare.dedup_text import record, representatives, verify_pairs
from genlab.prepare.store import text_records


def jaccard(a: str, b: str, k: int = 5) -> float:
    return near.jaccard(near.shingle_hashes(a, k), near.shingle_hashes(b, k))


def words(rng: random.Random, n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{rng.randrange(10**6)}" for _ in range(n)]


def chain() -> tuple[str, str, str]:
    """A ~ B and B ~ C at 0.75, while A and C are not near each other."""
    rng = random.Random(1)
    common, a, c = words(rng, 80), words(rng, 20), words(rng, 20)
    first, middle, last = " ".join(common + a), " ".join(common + a[:10] + c[:10]), " ".join(common + c)
    assert jaccard(first, middle) > 0.8 and jaccard(middle, last) > 0.8 and jaccard(first, last) < 0.7
    return first, middle, last


def splits(folder: Path) -> dict[str, tuple[str, str]]:
    """Each kept document's text -> (its split, its place)."""
    out = {}
    for split in ("train", "val", "test"):
        for record_ in text_records(folder, split):
            out[record_["text"]] = (split, record_["where"])
    return out


def test_a_chain_is_one_cluster_and_the_file_order_only_picks_its_representative(tmp_path):
    first, middle, last = chain()
    others = [" ".join(words(random.Random(s), 100, "o")) for s in range(6)]
    overrides = ["data.source=text", "model.family=transformer", "data.val_fraction=0.3", "data.test_fraction=0.3"]

    def run(name: str, texts: list[str], action: str) -> Path:
        folder = tmp_path / f"{name}-docs"
        folder.mkdir(exist_ok=True)
        for i, text in enumerate(texts):
            (folder / f"{i:02d}.txt").write_text(text)
        step = f"data.pipeline=[{{step: deduplicate, threshold: 0.75, near_action: {action}}}]"
        return prepare(None, tmp_path / f"{name}-{action}", [*overrides, f"data.path={folder}", step])

    forward = [first, *others[:3], middle, *others[3:], last]  # the chain's ends far apart in the order
    kept = splits(run("forward", forward, "remove"))
    assert first in kept and middle not in kept and last not in kept and len(kept) == 7
    removed = [json.loads(line) for line in (tmp_path / "forward-remove" / "removed.jsonl").read_text().splitlines()]
    assert [r["where"] for r in removed] == ["04.txt (near 00.txt)", "08.txt (near 00.txt)"]
    manifest = json.loads((tmp_path / "forward-remove" / "prepared.json").read_text())
    assert manifest["dedup"]["dedup_version"] == near.DEDUP_VERSION and manifest["dedup"]["verify"] is True

    backward = run("backward", forward[::-1], "remove")  # the same clusters; the first in the new order stays
    assert set(splits(backward)) == {last, *others}

    grouped = splits(run("forward", forward, "group"))
    assert len(grouped) == 9 and len({grouped[t][0] for t in (first, middle, last)}) == 1, "a cluster splits whole"


def test_exact_and_near_copies_name_what_they_copy_and_a_rerun_writes_the_same_bytes(tmp_path):
    first, middle, last = chain()
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in {"a.txt": first, "b.txt": middle, "c.txt": middle, "d.txt": last}.items():
        (docs / name).write_text(text)
    overrides = ["data.source=text", f"data.path={docs}", "model.family=transformer",
                 "data.pipeline=[{step: deduplicate, threshold: 0.75}]"]
    out = prepare(None, tmp_path / "out", overrides)
    gone = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert {(r["reason"], r["where"]) for r in gone} == {
        ("near duplicate", "b.txt (near a.txt)"), ("exact duplicate", "c.txt (copy of b.txt)"),
        ("near duplicate", "d.txt (near a.txt)")}
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    prepare(None, out, overrides)
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == before
    assert not list(tmp_path.glob(".*")), "no spill or staging folder is left behind"


def labelled_set(bases: int = 150) -> list[str]:
    """Documents with 0 to 3 edited copies each, 0 to 25% of their words replaced: Jaccard from about 0.5 to 1."""
    rng, docs = random.Random(0), []
    for _ in range(bases):
        original = words(rng, 120)
        docs.append(" ".join(original))
        for _ in range(rng.randrange(4)):
            edited = list(original)
            for i in rng.sample(range(120), int(rng.uniform(0, 0.25) * 120)):
                edited[i] = f"x{rng.randrange(10**6)}"
            docs.append(" ".join(edited))
    return docs


def same_cluster(roots: np.ndarray) -> set[tuple[int, int]]:
    return {pair for r in np.unique(roots) for pair in itertools.combinations(np.flatnonzero(roots == r).tolist(), 2)}


def test_clusters_score_precision_and_recall_against_exact_jaccard():
    docs = labelled_set()
    hashes = [near.shingle_hashes(d, 5) for d in docs]
    pairs = [(a, b) for a, b in itertools.combinations(range(len(docs)), 2)
             if near.jaccard(hashes[a], hashes[b]) >= 0.8]
    truth = same_cluster(near.representatives(len(docs), *np.array(pairs).T))
    assert 100 < len(truth) < 400
    scores = {}
    for verify in (True, False):
        opts = Deduplicate(verify=verify)
        digests, keys = zip(*(record(d, opts) for d in docs))
        _, roots = representatives(np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16), np.stack(keys), opts,
                                   lambda pairs, opts=opts: verify_pairs(pairs, opts, docs.__getitem__))
        found = same_cluster(roots)
        scores[verify] = len(found & truth) / len(found), len(found & truth) / len(truth)
    precision, recall = scores[True]
    print(f"verified: precision {precision:.3f}, recall {recall:.3f}; unverified: {scores[False]}")
    assert precision >= 0.95 and recall >= 0.95, scores
    assert scores[False][1] < recall, "unverified LSH misses more: its bands cannot favour recall"


def test_signatures_are_pinned_and_estimate_jaccard():
    first, middle, last = chain()
    assert near.signature("genlab", 5, 16).tolist()[:4] == near.signature("GENLAB  ", 5, 16).tolist()[:4]
    assert near.lsh_bands(0.8, 128, False) == (9, 13) and near.lsh_bands(0.8, 128, True) == (16, 8)
    pinned = near.signature("a pinned sentence for the manifest's scheme", 5, 128)
    assert pinned[:3].tolist() == PINNED, f"signatures changed: bump near.DEDUP_VERSION and repin ({pinned[:3]})"
    for a, b in ((first, middle), (first, last)):
        estimate = (near.signature(a, 5, 512) == near.signature(b, 5, 512)).mean()
        assert abs(estimate - jaccard(a, b)) < 0.06


PINNED = [29239878, 23040930, 250395340]


def brute_force(hashes: np.ndarray, hamming: int) -> np.ndarray:
    left, right = [], []
    for i in range(1, len(hashes)):
        close = np.flatnonzero(near.popcount(hashes[:i] ^ hashes[i]) <= hamming)
        left += close.tolist()
        right += [i] * len(close)
    return near.representatives(len(hashes), np.array(left, np.int64), np.array(right, np.int64))


def test_image_hashes_within_hamming_bits_give_the_clusters_of_comparing_every_pair():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.uint64) * np.uint64(2)
    copies = hashes[rng.integers(0, 2000, 400)]
    for bit in rng.integers(0, 64, (3, 400)):
        copies ^= np.uint64(1) << bit.astype(np.uint64)
    hashes = np.concatenate([hashes, copies, hashes[:30], np.zeros(500, np.uint64)])  # exact copies, blank images
    for hamming in (0, 2, 5, 12):
        assert (near.representatives(len(hashes), *near.hash_edges(hashes, hamming))
                == brute_force(hashes, hamming)).all(), hamming
