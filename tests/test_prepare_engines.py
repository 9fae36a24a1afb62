"""genlab prepare on Ray Data gives the same bytes as in one process: for 1, 3 and 8 blocks, on a rerun, on a
local Ray of 2 CPUs and on a simulated two-node cluster, with near-duplicate chains and clusters that straddle
files; images, audio and tables too; without Ray installed, one clear line."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
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
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".jsonl", ".safetensors",
                                                                                      ".parquet")}
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


def test_a_simulated_two_node_cluster_gives_the_same_bytes_for_text_and_images(tmp_path, local_ray):
    from ray.cluster_utils import Cluster

    corpus(tmp_path / "docs")
    base = ["data.source=text", f"data.path={tmp_path / 'docs'}", "model.family=transformer", STEPS]
    images = media(tmp_path / "media")["images"]
    local = written(prepare(None, tmp_path / "local", base))
    local_images = written(prepare(None, tmp_path / "local-images", images))
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        on = ["data.engine=ray", f"data.address={cluster.address}", "data.blocks=8"]
        out = prepare(None, tmp_path / "two", [*base, *on])
        assert len(ray.nodes()) == 2 and written(out) == local
        assert written(prepare(None, tmp_path / "two-images", [*images, *on])) == local_images
    finally:
        ray.shutdown()
        cluster.shutdown()


def media(root: Path) -> dict[str, list[str]]:
    """An image folder (grey images sorted first, so that some blocks hold only grey ones; near and exact copies in
    other classes; broken files), an audio folder (broken clips, a near and an exact copy) and three CSV files (a
    row repeated across files, a ragged row); the overrides that prepare each."""
    from PIL import Image

    from tests.test_audio import _broken_folder

    rng = np.random.default_rng(0)
    for i in range(24):  # smooth random scenes: distinct pictures, whose pHashes differ by ~32 bits
        scene = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((48, 48), Image.BICUBIC)
        folder = root / "images" / ("a_grey" if i < 12 else "b_colour" if i < 18 else "c_more")
        folder.mkdir(parents=True, exist_ok=True)
        (scene.convert("L") if i < 12 else scene).save(folder / f"scene{i:02d}.png")
        if i % 5 == 0:  # the same picture re-encoded and brightened, in another class
            copy = root / "images" / "d_copies"
            copy.mkdir(exist_ok=True)
            Image.eval(scene, lambda v: min(255, v + 6)).save(copy / f"scene{i:02d}.jpg", quality=85)
    (root / "images" / "d_copies" / "exact.png").write_bytes((root / "images" / "c_more" / "scene20.png").read_bytes())
    (root / "images" / "c_more" / "empty.png").write_bytes(b"")
    (root / "images" / "c_more" / "truncated.png").write_bytes((root / "images" / "c_more" / "scene21.png")
                                                              .read_bytes()[:200])
    _broken_folder(root / "clips")
    wave, rate = soundfile.read(root / "clips" / "seven" / "ok1.wav")
    soundfile.write(root / "clips" / "two" / "louder.wav", wave * 0.9, rate)
    (root / "clips" / "two" / "same.wav").write_bytes((root / "clips" / "seven" / "ok2.wav").read_bytes())
    (root / "table").mkdir()
    rows = [f"{i},{rng.normal():.4f},{'abc'[i % 3]}" for i in range(40)]
    for f in range(3):
        lines = ["id,x,kind", *rows[f::3], rows[0], "1,2"]  # a repeated row and a ragged one in each
        (root / "table" / f"part{f}.csv").write_text("\n".join(lines) + "\n")
    return {"images": ["data.source=image_folder", f"data.path={root / 'images'}", "data.image_size=32",
                       "data.pipeline=[{step: clean}, {step: normalize}, {step: deduplicate, hamming: 10}, "
                       "{step: labels}]"],
            "clips": ["data.source=audio_folder", f"data.path={root / 'clips'}", "model.family=audio_diffusion"],
            "table": ["data.source=table", f"data.path={root / 'table'}", "model.family=tabular_vae"]}


def test_images_audio_and_tables_on_ray_give_the_local_bytes(tmp_path, local_ray):
    for name, over in media(tmp_path).items():
        local = written(prepare(None, tmp_path / f"{name}-local", [*over, "data.blocks=1"]))
        steps = {s["step"]: s for s in local["manifest"]["steps"]}
        removed = sum(s["removed"] for s in steps.values())
        assert removed >= 3 and local["manifest"]["items"] > 10, (name, steps)
        for blocks in (3, 8, 8):  # the second 8: a rerun into the same folder
            ray_set = written(prepare(None, tmp_path / f"{name}-ray{blocks}", [*over, "data.engine=ray",
                                                                                 f"data.blocks={blocks}"]))
            assert ray_set == local, f"{name}, {blocks} blocks"
        if name == "images":  # grey and colour blocks agree (RGB for all), and copies across classes are found
            assert "mode RGB" in steps["clean"]["notes"] and "mode L" not in steps["clean"]["notes"]
            assert steps["deduplicate"]["reasons"] == {"exact duplicate": 1, "near duplicate": 5}
        if name == "clips":
            assert steps["deduplicate"]["reasons"] == {"exact duplicate": 1, "near duplicate": 1}


def test_without_ray_installed_the_engine_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("a document")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(GenlabError, match=r"pip install 'genlab\[ray\]'"):
        prepare(None, tmp_path / "out", ["data.source=text", f"data.path={tmp_path / 'a.txt'}", "data.engine=ray"])
    assert not (tmp_path / "out").exists()
