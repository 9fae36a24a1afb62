"""genlab prepare: bad files named and skipped with every valid item kept, deduplication, a split that
keeps near copies together, tables' coercion and missing values, the reports, and fit on a prepared set."""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.errors import GenlabError
from genlab.prepare import prepare
from genlab.prepare.near import jaccard, shingle_hashes
from genlab.prepare.store import text_records


def png_bytes(seed: int, size=(16, 16), mode="RGB", kind="PNG") -> bytes:
    """A noise image (solid colours would all be near copies of one another to a perceptual hash)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture
def broken(tmp_path):
    """The fixture folder of issue 17: every broken kind beside valid items of each modality."""
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(6):
        (root / f"good{i}.png").write_bytes(png_bytes(i))
    (root / "truncated.png").write_bytes(png_bytes(10, size=(64, 64))[:150])
    (root / "empty.png").write_bytes(b"")
    (root / "renamed.png").write_bytes(png_bytes(11, kind="JPEG"))
    (root / "cmyk.jpg").write_bytes(png_bytes(12, mode="CMYK", kind="JPEG"))
    (root / "tiny.png").write_bytes(png_bytes(13, size=(1, 1)))
    (root / "notes.txt").write_text("The first document, long enough to keep.\nIt has two lines.\n")
    (root / "latin1.txt").write_bytes(b"A valid first line.\ncaf\xe9 is not UTF-8 here\nA valid last line.\n")
    (root / "ragged.csv").write_text("a,b,c\n1,2,x\n3,4,y\n5,6,z,extra\n7,8,x\n")
    (root / "cells.csv").write_text("a,b,c\n9,10,y\n11,abc,z\n13,14,x\n")
    (root / "quote.csv").write_text('a,b,c\n20,21,x\n22,"unclosed,y\n')  # the quote would swallow the file
    (root / "latin.csv").write_bytes(b"a,b,c\n30,31,x\ncaf\xe9,1,y\n32,33,z\n")
    (root / "garbage.parquet").write_bytes(b"\xff\xfe not parquet")
    return root


def report(folder) -> dict:
    return json.loads((folder / "data_report.json").read_text())


def removed(summary: dict) -> dict[str, list[str]]:
    return {reason: places for step in summary["steps"] for reason, places in step["examples"].items()}


def test_a_folder_of_broken_files_is_prepared_naming_each_and_keeping_every_valid_item(broken, tmp_path):
    over = ["data.val_fraction=0.0", "data.test_fraction=0.0"]
    images = report(prepare(None, tmp_path / "images", ["data.source=image_folder", f"data.path={broken}",
                                                         "data.image_size=16", *over]))
    gone = removed(images)
    assert images["items"] == 8, "six good images, the JPEG named .png and the CMYK JPEG"
    assert gone["zero-byte file"] == ["empty.png"]
    every = [json.loads(line) for line in (tmp_path / "images/removed.jsonl").read_text().splitlines()]  # all, not 5
    unreadable = " ".join(r["where"] for r in every if r["reason"] == "not a readable image")
    assert sum(r["reason"] == "not a readable image" for r in every) == 8 and len(gone["not a readable image"]) == 5
    assert "truncated.png" in unreadable and "notes.txt" in unreadable and "garbage.parquet" in unreadable
    assert any("tiny.png (1x1)" in p for p in gone["smaller than 8 pixels a side"])
    notes = " ".join(n for s in images["steps"] for n in s["notes"])
    assert "renamed.png: the content is JPEG, the name says .png" in notes
    x = load_file(str(tmp_path / "images/train-00000.safetensors"))["x"]
    assert x.shape == (8, 3, 16, 16), "CMYK came out as RGB like the rest"


    text = report(prepare(None, tmp_path / "text", ["data.source=text", f"data.path={broken}", *over,
                                                    "model.family=transformer"]))
    assert text["items"] == 2 and removed(text)["not UTF-8"] == ["latin1.txt:2 (byte 3)"]
    kept = [r["text"] for r in text_records(tmp_path / "text", "train")]
    assert any("A valid first line." in t and "A valid last line." in t for t in kept), "the file's valid lines stay"

    table = report(prepare(None, tmp_path / "table", ["data.source=table", f"data.path={broken}", *over,
                                                      "model.family=tabular_vae"]))
    gone = removed(table)
    assert gone["wrong number of fields"] == ["ragged.csv:4 (4 fields, the header has 3)"]
    assert gone["not a number in numeric column 'b' (cell emptied, row kept)"] == ["cells.csv:3, b: 'abc'"]
    assert gone["malformed CSV row"] == ["quote.csv:3 (unexpected end of data)"]
    assert gone["not UTF-8"] == ["latin.csv:3 (byte 3)"] and gone["not a readable parquet file"] == [
        "garbage.parquet (ArrowInvalid)"]
    assert table["items"] == 9, "every row but the ragged, the unclosed and the undecodable one"
    rows = pd.read_parquet(tmp_path / "table/train.parquet")
    assert rows["b"].isna().sum() == 1 and pd.api.types.is_numeric_dtype(rows["b"])


def test_a_file_the_decoder_complains_about_is_kept_and_named_in_one_genlab_line(tmp_path):
    """Pillow warns about a TIFF tag that points past the file's end; the pixels are fine. With warnings as
    errors in tests, a raw warning reaching the user would fail this test."""
    import struct

    root = tmp_path / "tiffs"
    root.mkdir()
    for i in range(4):
        (root / f"good{i}.png").write_bytes(png_bytes(i))
    raw = bytearray(png_bytes(9, kind="TIFF"))
    Image.open(io.BytesIO(bytes(raw))).save(buffer := io.BytesIO(), format="TIFF", description="a long description")
    raw = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", raw[4:8])[0]
    for i in range(struct.unpack("<H", raw[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", raw[entry : entry + 2])[0] == 270:  # ImageDescription: claim 100 kB of text
            raw[entry + 4 : entry + 8] = struct.pack("<I", 100_000)
    (root / "odd.tif").write_bytes(bytes(raw))
    said = logging.Handler()
    said.emit, lines = (lambda record: lines.append(record.getMessage())), []
    logging.getLogger("genlab").addHandler(said)
    try:
        summary = report(prepare(None, tmp_path / "out", ["data.source=image_folder", f"data.path={root}",
                                                          "data.image_size=16", "data.val_fraction=0.0",
                                                          "data.test_fraction=0.0"]))
    finally:
        logging.getLogger("genlab").removeHandler(said)
    assert summary["items"] == 5, "the TIFF's pixels are kept"
    notes = " ".join(n for s in summary["steps"] for n in s["notes"])
    assert "odd.tif: Tag data larger than file. Skipping tag 270 (read all the same)" in notes
    assert any("the image decoder complained about 1 file(s): odd.tif" in line for line in lines)

def near_copies(root, bases: int = 30, copies: int = 3) -> None:
    rng = random.Random(0)
    words = ["alpha", "river", "stone", "light", "garden", "window", "silver", "market", "forest", "engine"]
    root.mkdir()
    for b in range(bases):
        text = " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(60))
        for c in range(copies):
            edited = text.replace(text.split()[c], "changed", 1)  # one word differs per copy
            (root / f"base{b:02d}_copy{c}.txt").write_text(edited)
    (root / "exact.txt").write_text((root / "base00_copy0.txt").read_text())


def test_near_copies_are_removed_or_kept_together_in_one_split(tmp_path):
    near_copies(tmp_path / "docs")
    base = ["data.source=text", f"data.path={tmp_path / 'docs'}", "model.family=transformer",
            "data.val_fraction=0.2", "data.test_fraction=0.2"]
    removed_run = report(prepare(None, tmp_path / "removed", base))
    dedup = next(s for s in removed_run["steps"] if s["step"] == "deduplicate")
    assert dedup["reasons"] == {"exact duplicate": 1, "near duplicate": 60} and removed_run["items"] == 30

    grouped = tmp_path / "grouped"
    prepare(None, grouped, [*base, "data.pipeline=[{step: clean}, {step: deduplicate, near_action: group}]"])
    split_of = {}
    for k, split in enumerate(("train", "val", "test")):
        for record in text_records(grouped, split):
            split_of[record["where"]] = (k, record["text"])
    assert len(split_of) == 90 and {k for k, _ in split_of.values()} == {0, 1, 2}
    for b in range(30):
        assert len({split_of[f"base{b:02d}_copy{c}.txt"][0] for c in range(3)}) == 1, f"base {b} straddles splits"
    texts = [(k, shingle_hashes(t, 5)) for k, t in split_of.values()]
    for k, a in texts:  # and no near copy across splits at all
        for j, b in texts:
            if k != j:
                assert jaccard(a, b) < 0.8


def test_clean_removes_boilerplate_when_asked_and_keeps_code_indentation(tmp_path):
    docs = tmp_path / "pages"
    docs.mkdir()
    banner = "Copyright (c) Example Corp. All rights reserved."
    for i in range(6):
        body = f"def page_{i}():\n    if __name__ == 'page_{i}':\t \n        return {i}   \n"
        (docs / f"p{i}.md").write_text(f"{banner}\n{body}" if i < 4 else body)
    base = ["data.source=text", f"data.path={docs}", "model.family=transformer", "data.val_fraction=0.0",
            "data.test_fraction=0.0"]

    def texts(name: str, steps: str) -> list[str]:
        prepare(None, tmp_path / name, [*base, f"data.pipeline={steps}"])
        return [r["text"] for r in text_records(tmp_path / name, "train")]

    code = [f"def page_{i}():\n    if __name__ == 'page_{i}':\n        return {i}" for i in range(6)]
    kept = texts("default", "[{step: clean}]")  # trailing spaces and tabs go; indentation and the banner stay
    assert sorted(kept) == sorted(f"{banner}\n{c}" if i < 4 else c for i, c in enumerate(code))
    cleaned = texts("boilerplate", "[{step: clean, boilerplate: 4}]")
    assert sorted(cleaned) == sorted(code), "a line in 4 documents is boilerplate at boilerplate: 4"
    kept5 = texts("five", "[{step: clean, boilerplate: 5}]")
    assert sum(banner in t for t in kept5) == 4, "4 documents are under a threshold of 5"
    collapsed = texts("collapse", "[{step: clean, whitespace: collapse}]")
    assert any(" if __name__ == 'page_2':\n return 2" in t for t in collapsed), "collapse: runs of spaces become one"


def test_near_copies_of_images_are_found_by_perceptual_hash_and_tiny_images_are_not_guessed_at(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # smooth random scenes: distinct images whose pHashes differ by ~32 bits
        scene = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
        scene.save(root / f"scene{i:02d}.png")
        if i < 4:  # a re-encoded, slightly brightened copy: not the same bytes, the same picture
            brighter = Image.eval(scene, lambda v: min(255, v + 6))
            brighter.save(root / f"scene{i:02d}_copy.jpg", quality=85)
    over = ["data.source=image_folder", f"data.path={root}", "data.image_size=64", "data.val_fraction=0.0",
            "data.test_fraction=0.0", "data.pipeline=[{step: deduplicate}]"]
    summary = report(prepare(None, tmp_path / "out", over))
    dedup = next(s for s in summary["steps"] if s["step"] == "deduplicate")
    assert summary["items"] == 12 and dedup["reasons"] == {"near duplicate": 4}
    assert sorted(e.split(" ")[0] for e in dedup["examples"]["near duplicate"]) == [
        f"scene{i:02d}_copy.jpg" for i in range(4)]
    assert "4 near-duplicate cluster(s), sizes 2, 2, 2, 2" in " ".join(dedup["notes"])

    small = report(prepare(None, tmp_path / "small", [*over[:2], "data.image_size=16", *over[3:]]))
    notes = " ".join(next(s for s in small["steps"] if s["step"] == "deduplicate")["notes"])
    assert small["items"] == 16 and "16-pixel images are under pHash's 32" in notes


def test_tables_fill_or_drop_missing_cells_and_scale_invertibly(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [1.0, None, 3.0, 4.0, 100.0], "kind": ["a", "b", None, "a", "a"]}).to_csv(path, index=False)
    base = ["data.source=table", f"data.path={path}", "data.val_fraction=0.0", "data.test_fraction=0.0",
            "model.family=tabular_vae"]

    def rows(name, steps):
        prepare(None, tmp_path / name, [*base, f"data.pipeline={steps}"])
        return pd.read_parquet(tmp_path / name / "train.parquet"), report(tmp_path / name)

    filled, _ = rows("mean", "[{step: clean}, {step: missing, strategy: mean}]")
    assert filled["x"].tolist() == [1.0, 27.0, 3.0, 4.0, 100.0] and filled["kind"].tolist()[2] == "a"
    dropped, summary = rows("drop", "[{step: clean}, {step: missing, strategy: drop}]")
    assert len(dropped) == 3 and removed(summary)["a missing cell"] == ["t.csv:3", "t.csv:4"]
    flagged, _ = rows("flag", "[{step: clean}, {step: missing}]")
    assert flagged["x"].isna().sum() == 1, "flag keeps the holes for models that learn with them"
    scaled, summary = rows("scaled", "[{step: clean}, {step: normalize, scaling: standard}]")
    p = summary["scaling"]["x"]
    assert np.allclose(scaled["x"].dropna() * p["scale"] + p["shift"], [1.0, 3.0, 4.0, 100.0])
    notes = " ".join(n for s in summary["steps"] for n in s["notes"])
    assert "x: 1 outlier cell(s)" in notes


def test_fit_trains_on_a_prepared_set_and_info_shows_it(tmp_path):
    from .conftest import tiny

    steps = "[{step: labels, weights: true}, {step: deduplicate, near: false}]"  # 8x8 is too small for pHash
    folder = prepare(None, tmp_path / "digits", ["data.image_size=8", f"data.pipeline={steps}"])
    summary = report(folder)
    assert summary["labels"]["imbalance_ratio"] < 1.2 and set(json.loads((folder / "weights.json").read_text())) \
        == {"train", "val", "test"}
    html = (folder / "data_report.html").read_text()
    assert "<table>" in html and html.count("data:image/png;base64") >= 3, "class chart, size histogram, samples"
    run = genlab.fit(None, overrides=tiny(f"data.prepared={folder}"), out=tmp_path / "run")
    assert run.summary["steps"] == 30
    data = genlab.load_config(None, [f"data.prepared={folder}"]).data
    from genlab.data import load_dataset

    loaded = load_dataset(data)
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == tuple(summary["splits"].values())
    shown = CliRunner().invoke(app, ["info", str(folder), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["items"] == summary["items"]


def test_running_twice_replaces_and_a_failed_run_leaves_the_earlier_set_intact(tmp_path, broken):
    base = ["data.source=text", f"data.path={broken}", "model.family=transformer"]
    first = prepare(None, tmp_path / "set", base)
    items = (first / "train-00000.jsonl").read_text()
    assert prepare(None, tmp_path / "set", base) == first and (first / "train-00000.jsonl").read_text() == items
    before = (first / "prepared.json").read_text()
    with pytest.raises(GenlabError, match="nothing is left after the pipeline"):
        prepare(None, tmp_path / "set", [*base, "data.pipeline=[{step: clean, min_chars: 100000}]"])
    assert (first / "prepared.json").read_text() == before and not list(tmp_path.glob(".set.*"))
    result = CliRunner().invoke(app, ["prepare", "--set", "data.source=text", "--set", f"data.path={broken}",
                                      "--set", "data.pipeline=[{step: nope}]", "--out", str(tmp_path / "x"),
                                      "configs/python-docs-lm.yaml"])
    assert result.exit_code == 2 and "data.pipeline.0" in result.output


def test_augmentation_changes_images_reproducibly_and_an_augmented_run_resumes_exactly(tmp_path):
    import torch

    from genlab.config.prepare import Augment
    from genlab.data.augment import augment_images

    from .conftest import Crash, tiny, weights

    x = torch.rand(16, 3, 12, 12) * 2 - 1
    opts = Augment(hflip=True, crop_scale=(0.6, 1.0), rotation=15, color_jitter=0.3)
    torch.manual_seed(1)
    a = augment_images(x, opts)
    torch.manual_seed(1)
    assert torch.equal(a, augment_images(x, opts)) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1 and (a - x).abs().mean() > 0.05
    assert torch.equal(augment_images(x, Augment()), x), "nothing switched on, nothing changed"
    flipped = augment_images(x, Augment(hflip=True))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x, strict=True))

    steps = "data.pipeline=[{step: augment, hflip: true, crop_scale: [0.7, 1.0], rotation: 10}]"
    whole = genlab.fit(None, overrides=tiny(steps), out=tmp_path / "whole")
    plain = genlab.fit(None, overrides=tiny(), out=tmp_path / "plain")
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=tiny(steps), out=tmp_path / "broken", callbacks=[Crash(20)])
    resumed = genlab.fit(resume=tmp_path / "broken")
    a, b, c = weights(whole.path), weights(resumed.path), weights(plain.path)
    assert all(torch.equal(a[k], b[k]) for k in a), "an augmented run resumes bit for bit"
    assert not all(torch.equal(a[k], c[k]) for k in a), "and augmentation changed what was learned"


def test_a_killed_prepare_leaves_the_earlier_set_intact_and_a_rerun_reuses_its_finished_blocks(tmp_path,
                                                                                             monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    import genlab.prepare.text as text

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghij klmnopqrst uvwxyz", dtype=np.uint8)
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as f:  # 100 documents of 40 kB: seconds of near-duplicate hashing
        for _ in range(100):
            f.write(json.dumps({"text": letters[rng.integers(0, len(letters), 40_000)].tobytes().decode()}) + "\n")
    small = tmp_path / "small.txt"
    small.write_text("an earlier, small corpus that was prepared first")
    out = tmp_path / "set"
    prepare(None, out, ["data.source=text", f"data.path={small}", "data.val_fraction=0", "data.test_fraction=0"])
    before = (out / "prepared.json").read_text()
    over = ["data.source=text", f"data.path={corpus}", "data.blocks=4"]
    command = [sys.executable, "-m", "genlab", "prepare", *(a for o in over for a in ("--set", o)), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = tmp_path / ".set.partial" / ".blocks" / "00000-first.json"
    deadline = time.monotonic() + 120
    while not finished.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # midway: the first block is done, the second is being read
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the kill came after prepare had finished: make the corpus larger"
    assert (out / "prepared.json").read_text() == before, "the earlier set is untouched"
    assert text_records(out, "train") and json.loads(before)["items"] == 1

    ran = []
    real = text._first
    monkeypatch.setattr(text, "_first", lambda job, block: ran.append(block.index) or real(job, block))
    prepare(None, out, over)  # the rerun: the finished block is read back, not hashed again
    assert 0 not in ran and ran, ran
    whole = prepare(None, tmp_path / "whole", over)
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == \
        {p.name: p.read_bytes() for p in whole.glob("*.jsonl")}
    assert json.loads((out / "prepared.json").read_text())["items"] == 100
    assert not (tmp_path / ".set.partial").exists()


def test_files_a_source_does_not_read_get_one_line_naming_them(tmp_path):
    picture = tmp_path / "photo.png"
    picture.write_bytes(png_bytes(0))
    (tmp_path / "empty").mkdir()
    for source in ("text", "table"):
        with pytest.raises(GenlabError, match="data.path: photo.png is not one of the files this source reads"):
            prepare(None, tmp_path / "x", [f"data.source={source}", f"data.path={picture}"])
    with pytest.raises(GenlabError, match=r"data.path: no text files \(.txt, .md, .rst, .jsonl\) found under"):
        prepare(None, tmp_path / "x", ["data.source=text", f"data.path={tmp_path / 'empty'}"])
    result = CliRunner().invoke(app, ["prepare", "--set", "data.source=image_folder", "--set",
                                      f"data.path={tmp_path / 'empty'}"])
    assert result.exit_code == 1 and "no image files found under" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


MEMORY_CAP_MB = 40  # what preparing text may add to the process's peak memory, whatever the corpus size

BOUNDED = """
import json, resource, sys
from genlab.prepare import prepare
steps = "data.pipeline=[{step: clean}, {step: deduplicate, near: false}]"
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
prepare(None, sys.argv[3], ["data.source=text", f"data.path={sys.argv[1]}", steps])  # imports and first use
before = peak()
prepare(None, sys.argv[4], ["data.source=text", f"data.path={sys.argv[2]}", steps])
print(json.dumps({"before": before, "after": peak()}))
"""


def test_a_text_corpus_several_times_the_memory_cap_prepares_in_bounded_memory(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    with big.open("w") as f:
        for _ in range(3200):  # 3200 distinct documents of 40 kB: 128 MB, over three times the cap
            f.write(json.dumps({"text": letters[rng.integers(0, len(letters), 40_000)].tobytes().decode()}) + "\n")
    small.write_text(json.dumps({"text": "a small warm-up document"}) + "\n")
    size = big.stat().st_size / 2**20
    assert size > 3 * MEMORY_CAP_MB
    done = subprocess.run([sys.executable, "-c", BOUNDED, str(small), str(big), str(tmp_path / "a"),
                           str(tmp_path / "b")], capture_output=True, text=True, check=True)
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    grew = rss["after"] - rss["before"]
    print(f"peak RSS grew {grew:.1f} MB preparing {size:.0f} MB of text")
    assert grew < MEMORY_CAP_MB, f"peak RSS grew {grew:.0f} MB preparing {size:.0f} MB of text"
    summary = report(tmp_path / "b")
    assert summary["items"] == 3200 and sum(summary["splits"].values()) == 3200


def test_images_are_spilled_where_they_are_read_and_written_in_shards_never_all_in_memory(tmp_path, monkeypatch):
    import tracemalloc

    import genlab.prepare.items as items
    from genlab.prepare.store import load_prepared

    root, warm = tmp_path / "photos", tmp_path / "warm"
    root.mkdir()
    warm.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):  # smooth scenes (small files) of 27 KB of pixels each: 16 MB in all
        scene = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(scene).resize((96, 96), Image.BICUBIC).save((warm if i < 3 else root) / f"{i:03d}.png")
    pixels = 597 * 96 * 96 * 3
    over = ["data.source=image_folder", "data.blocks=16", "data.image_size=96"]
    prepare(None, tmp_path / "warm-out", [*over, f"data.path={warm}"])  # imports and first calls stay out
    monkeypatch.setattr(items, "SHARD_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        folder = prepare(None, tmp_path / "out", [*over, f"data.path={root}"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak traced memory {peak / 2**20:.1f} MB for {pixels / 2**20:.1f} MB of pixels")
    assert peak < 0.5 * pixels, f"{peak / 2**20:.1f} MB held for {pixels / 2**20:.1f} MB of pixels"  # in memory: 1.3x
    manifest = json.loads((folder / "prepared.json").read_text())
    shards = manifest["shards"]["train"]
    assert len(shards) > 5 and [s["file"] for s in shards][:2] == ["train-00000.safetensors", "train-00001.safetensors"]
    assert not (folder / ".blocks").exists() and sum(s["items"] for s in shards) == manifest["splits"]["train"]
    loaded = load_prepared(folder)
    assert loaded.x.shape == (597, 3, 96, 96) and manifest["items"] == 597


def test_an_interrupted_image_prepare_keeps_the_earlier_set_and_a_rerun_reuses_its_finished_blocks(tmp_path,
                                                                                                   monkeypatch):
    import genlab.prepare.items as items
    from genlab.prepare.kinds import ImageKind

    root = tmp_path / "photos"
    for i in range(80):
        (root / ("cats" if i % 2 else "dogs")).mkdir(parents=True, exist_ok=True)
        scene = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(scene).resize((48, 48), Image.BICUBIC).save(root / ("cats" if i % 2 else "dogs") / f"{i}.png")
    out = tmp_path / "set"
    over = ["data.source=image_folder", f"data.path={root}", "data.blocks=4", "data.image_size=32"]
    prepare(None, out, [*over, "data.limit=10"])
    before = (out / "prepared.json").read_text()
    real, ran = items.block_items, []

    def interrupted(job, index, files):  # Ctrl-C while the third block is read: like a kill, nothing is cleaned
        if index == 2:
            raise KeyboardInterrupt
        return real(job, index, files)

    monkeypatch.setattr(items, "block_items", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(None, out, over)
    assert (out / "prepared.json").read_text() == before, "the earlier set is untouched"
    monkeypatch.setattr(items, "block_items", real)
    read = ImageKind.read_paths
    monkeypatch.setattr(ImageKind, "read_paths", lambda self, root, paths, *rest: ran.append(len(paths)) or
                        read(self, root, paths, *rest))
    prepare(None, out, over)
    assert len(ran) == 2 and sum(ran) < 60, "the two finished blocks are read back, the other two read"
    assert not (tmp_path / ".set.partial").exists()
    whole = prepare(None, tmp_path / "whole", over)
    assert {p.name: p.read_bytes() for p in out.glob("*.safetensors")} == \
        {p.name: p.read_bytes() for p in whole.glob("*.safetensors")}
    assert json.loads((out / "prepared.json").read_text())["items"] == 80


def test_fit_prepares_a_users_files_once_and_never_serves_a_changed_input_stale(tmp_path, monkeypatch, caplog):
    import logging

    from .conftest import tiny

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    (folder / "copy.png").write_bytes(png_bytes(3))
    (folder / "empty.png").write_bytes(b"")
    cache = tmp_path / "cache/prepared"

    def sets() -> list[Path]:
        return [p for p in cache.iterdir() if not p.name.startswith(".")] if cache.exists() else []

    over = tiny("data.source=image_folder", f"data.path={folder}")  # no data.pipeline: the default one
    with caplog.at_level(logging.INFO, logger="genlab"):
        first = genlab.fit(None, overrides=over, out=tmp_path / "a")
    assert len(sets()) == 1 and sum(first.summary["data"][s] for s in ("train", "val", "test")) == 40
    assert "read 42; validate: zero-byte file: 1, e.g. empty.png; deduplicate: exact duplicate: 1, e.g. " \
           "copy.png (copy of 3.png); " in caplog.text
    assert (sets()[0] / "data_report.html").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genlab"):
        genlab.fit(None, overrides=over, out=tmp_path / "b")
    assert "using the prepared set cached at" in caplog.text and len(sets()) == 1
    (folder / "0.png").write_bytes(png_bytes(99))  # same name, new content: a new fingerprint
    genlab.fit(None, overrides=over, out=tmp_path / "c")
    assert len(sets()) == 2
    raw = genlab.fit(None, overrides=[*over, "data.pipeline=[]"], out=tmp_path / "raw")  # the source as it is
    assert len(sets()) == 2 and sum(raw.summary["data"][s] for s in ("train", "val", "test")) == 41


def test_class_balanced_weights_reach_the_tabular_vaes_batches(tmp_path):
    import pandas as pd

    from genlab.data import load_dataset
    from genlab.data.datamodule import SeededBatches
    from genlab.models.tabular_vae import TabularVAE

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200),
                          "kind": ["rare" if i % 10 == 0 else "common" for i in range(200)]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    steps = "data.pipeline=[{step: clean}, {step: labels, weights: true}]"
    cfg = genlab.load_config(None, ["model.family=tabular_vae", "data.source=table", "data.target=kind",
                                    f"data.path={tmp_path / 'rows.csv'}", steps])
    model, data = TabularVAE.build(cfg.model, load_dataset(cfg.data), cfg.train)
    kind = model.columns.names.index("kind")  # categories in order: common 0, rare 1
    codes = torch.cat([b["x"][:, kind] for _, b in zip(range(100), _forever(SeededBatches(data.train, 20, seed=0)))])
    assert (codes == 1).float().mean() == pytest.approx(0.5, abs=0.06), "the rare tenth fills half the batches"


def test_class_balanced_weights_make_training_batches_balanced(tmp_path):
    import torch

    from genlab.data import load_dataset
    from genlab.data.datamodule import SeededBatches

    for name, count in (("common", 45), ("rare", 5)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "imgs" / name / f"{i}.png").write_bytes(png_bytes(1000 * len(name) + i))
    over = ["data.source=image_folder", f"data.path={tmp_path / 'imgs'}", "data.image_size=8",
            "data.val_fraction=0.0", "data.test_fraction=0.0"]
    plain = prepare(None, tmp_path / "plain", [*over, "data.pipeline=[{step: labels}]"])
    weighted = prepare(None, tmp_path / "weighted", [*over, "data.pipeline=[{step: labels, weights: true, "
                                                                 "min_share: 0.2}]"])
    assert report(weighted)["labels"]["rare"] == ["rare"], "10% of the items is under a min_share of 20%"

    def rare_share(folder) -> float:
        split = load_dataset(genlab.load_config(None, [f"data.prepared={folder}"]).data).train
        batches = SeededBatches(split, 10, seed=0)
        labels = torch.cat([b["y"] for _, b in zip(range(200), _forever(batches))])
        return float((labels == 1).float().mean())

    assert rare_share(plain) == pytest.approx(0.1, abs=0.02)
    assert rare_share(weighted) == pytest.approx(0.5, abs=0.06)


def _forever(batches):
    while True:
        yield from batches
