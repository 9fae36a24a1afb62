"""genlab prepare on Ray Data gives the same bytes as in one process: for 1, 3 and 8 blocks, on a rerun, on a
local Ray of 2 CPUs and on a simulated two-node cluster, with near-duplicate chains and clusters that straddle
files; without Ray installed, one clear line."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.errors import GenlabError
from genlab.prepare import prepare

ray = pytest.importorskip("ray")

STEPS = "data.pipeline=[{step: clean, boilerplate: 3}, {step: deduplicate, threshold: 0.75, near_action: group}]"


def corpus(root: Path) -> int:
    """Four JSONL files and a text file: near copies and chains shuffled across files, exact copies, a line that is
    not JSON and a boilerplate line; returns the number of documents."""
    rng = random.Random(0)

    def words(n: int, tag: str = "w") -> list[str]:
        return [f"{tag}{rng.randrange(10**6)}" for _ in range(n)]

    docs = []
    for _ in range(60):
        base = words(100)
        docs.append(" ".join(base))
        for _ in range(rng.randrange(3)):
            edited = list(base)
            for i in rng.sample(range(100), rng.randrange(1, 12)):
                edited[i] = f"x{rng.randrange(10**6)}"
            docs.append(" ".join(edited))
    for _ in range(5):  # chains: A ~ B ~ C, A not near C
        common, a, c = words(80), words(20), words(20)
        docs += [" ".join(common + a), " ".join(common + a[:10] + c[:10]), " ".join(common + c)]
    docs += docs[:7]
    rng.shuffle(docs)
    docs = [f"Copyright the example authors, all rights kept.\n{d}" if i % 9 == 0 else d for i, d in enumerate(docs)]
    root.mkdir()
    for f in range(4):
        with (root / f"part{f}.jsonl").open("w") as out:
            for doc in docs[f::4]:
                out.write(json.dumps({"text": doc}) + "\n")
            out.write("not json\n")
    (root / "notes.txt").write_text(docs[3])
    return len(docs) + 1


def written(folder: Path) -> dict:
    """The set's files as bytes, and its manifest and report less what may differ: seconds and the engine."""
    files = {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}
    manifest = json.loads((folder / "prepared.json").read_text())
    for step in manifest["steps"]:
        step.pop("seconds")
    for key in ("engine", "address", "blocks"):
        manifest["data"].pop(key)
    return {"files": files, "manifest": manifest}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_gives_the_local_bytes_for_any_number_of_blocks_and_on_a_rerun(tmp_path, local_ray, monkeypatch):
    import genlab.prepare.text as text

    monkeypatch.setattr(text, "SHARD_BYTES", 8192)  # several shards a split, each joined from several blocks' parts
    n = corpus(tmp_path / "docs")
    base = ["data.source=text", f"data.path={tmp_path / 'docs'}", "model.family=transformer", STEPS]
    local = written(prepare(None, tmp_path / "local", [*base, "data.blocks=1"]))
    manifest = local["manifest"]
    assert manifest["read"] == n + 4  # and 4 lines that are not JSON
    shards = manifest["shards"]
    assert len(shards["train"]) > 5 and len(local["files"]) == 1 + sum(map(len, shards.values()))
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["deduplicate"]["reasons"] == {"exact duplicate": 8} and "near-duplicate cluster" in \
        " ".join(steps["deduplicate"]["notes"]) and steps["clean"]["notes"][0].startswith("1 boilerplate line")
    assert written(prepare(None, tmp_path / "local3", [*base, "data.blocks=3"])) == local
    for blocks in (1, 3, 8):
        assert written(prepare(None, tmp_path / f"ray{blocks}", [*base, "data.engine=ray", f"data.blocks={blocks}"])
                       ) == local, f"{blocks} blocks"
    done = CliRunner().invoke(app, ["prepare", "--set", base[0], "--set", base[1], "--set", base[2], "--set",
                                    base[3], "--set", "data.blocks=3", "--engine", "ray", "--out",
                                    str(tmp_path / "ray3")])  # a rerun into the same folder, from the command line
    assert done.exit_code == 0, done.output
    assert written(tmp_path / "ray3") == local


def test_a_simulated_two_node_cluster_gives_the_same_bytes(tmp_path, local_ray):
    from ray.cluster_utils import Cluster

    corpus(tmp_path / "docs")
    base = ["data.source=text", f"data.path={tmp_path / 'docs'}", "model.family=transformer", STEPS]
    local = written(prepare(None, tmp_path / "local", base))
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        out = prepare(None, tmp_path / "two", [*base, "data.engine=ray", f"data.address={cluster.address}",
                                               "data.blocks=8"])
        assert len(ray.nodes()) == 2 and written(out) == local
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_without_ray_installed_the_engine_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("a document")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(GenlabError, match=r"pip install 'genlab\[ray\]'"):
        prepare(None, tmp_path / "out", ["data.source=text", f"data.path={tmp_path / 'a.txt'}", "data.engine=ray"])
    assert not (tmp_path / "out").exists()
