"""Captioned images: an image folder's captions as Hugging Face's imagefolder and the fine-tuning tools write them,
through genlab prepare and back; the built-in captioned_shapes with its held-out pairs; the prompt-adherence judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import load_config
from genlab.data import captioned_shapes as scenes
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation import adherence
from genlab.prepare import prepare


def noise_png(path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def captioned(tmp_path):
    """Images captioned three ways (metadata.jsonl, a subfolder's metadata.csv, NAME.txt), with every bad kind."""
    root = tmp_path / "captioned"
    (root / "more").mkdir(parents=True)
    pixels = {}
    rows = []
    for i in range(8):
        pixels[f"a{i}.png"] = noise_png(root / f"a{i}.png", i)
        rows.append(json.dumps({"file_name": f"a{i}.png", "text": f"picture number {i}", "other": i}))
    rows.append(json.dumps({"file_name": "gone.png", "text": "an image that is not there"}))
    rows.append('{"file_name": "a0.png", "text": ')  # a broken line: named, the rest read
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    pixels["empty.png"] = noise_png(root / "empty.png", 20)
    pixels["latin.png"] = noise_png(root / "latin.png", 21)
    pixels["bare.png"] = noise_png(root / "bare.png", 22)
    with (root / "metadata.jsonl").open("ab") as f:
        f.write(b'{"file_name": "empty.png", "text": "   "}\n{"file_name": "latin.png", "text": "caf\xe9 au lait"}\n')
    for i in range(8, 12):
        pixels[f"more/b{i}.png"] = noise_png(root / "more" / f"b{i}.png", i)
    (root / "more" / "metadata.csv").write_text("file_name,text\n" + "".join(
        f'b{i}.png,"picture number {i}, from a table"\n' for i in range(8, 12)))
    for i in range(12, 15):
        pixels[f"c{i}.png"] = noise_png(root / f"c{i}.png", i)
        (root / f"c{i}.txt").write_text(f"picture number {i}\n")
    pixels["badtxt.png"] = noise_png(root / "badtxt.png", 23)
    (root / "badtxt.txt").write_bytes(b"na\xefve caption\n")
    (root / "README.txt").write_text("a text file beside the images that captions nothing")
    return root, pixels


def test_an_image_folders_captions_are_read_bad_ones_named_and_they_survive_prepare(captioned, tmp_path):
    root, pixels = captioned
    over = ["data.source=image_folder", f"data.path={root}", "data.image_size=16", "data.val_fraction=0.0",
            "data.test_fraction=0.0", "data.pipeline=[{step: validate}]"]
    out = prepare(None, tmp_path / "out", over)
    summary = json.loads((out / "data_report.json").read_text())
    validate = summary["steps"][0]
    assert validate["reasons"] == {"missing caption": 1, "empty caption": 1, "caption not UTF-8": 2,
                                   "not a readable image": 1}, "README.txt captions nothing: it is read as a file"
    assert validate["examples"]["caption not UTF-8"] == ["badtxt.png", "latin.png"]
    assert validate["examples"]["missing caption"] == ["bare.png"]
    notes = " ".join(validate["notes"])
    assert "metadata.jsonl:9: gone.png is not an image in the folder" in notes
    assert "metadata.jsonl:10: not a JSON object" in notes
    assert summary["captioned"] and summary["items"] == 15

    d = load_dataset(load_config(None, ["data.source=image_folder", f"data.prepared={out}"]).data)
    assert d.spec.captioned and len(d.train.captions) == len(d.train) == 15
    for x, text in zip(d.train.x, d.train.captions, strict=True):  # every image still beside its own caption
        number = int(text.split()[2].rstrip(","))
        file = f"a{number}.png" if number < 8 else f"more/b{number}.png" if number < 12 else f"c{number}.png"
        expected = torch.from_numpy(pixels[file]).permute(2, 0, 1).float() / 255 * 2 - 1
        assert torch.allclose(x, expected, atol=1e-6), text
    assert "picture number 9, from a table" in d.train.captions


def test_an_unprepared_folder_reads_captions_too_and_a_wrong_column_is_named(captioned, tmp_path):
    root, _ = captioned
    cfg = load_config(None, ["data.source=image_folder", f"data.path={root}", "data.image_size=16",
                             "data.pipeline=[]"]).data
    d = load_dataset(cfg)
    captions = d.train.captions + d.val.captions + d.test.captions
    assert sorted(captions) == sorted([f"picture number {i}" for i in (*range(8), 12, 13, 14)]
                                      + [f"picture number {i}, from a table" for i in range(8, 12)])
    with pytest.raises(GenlabError, match=r"data.text_field: metadata.jsonl:1 has no field 'caption'; its fields "
                                          r"are file_name, text, other"):
        load_dataset(load_config(None, [*(f"{k}={v}" for k, v in (("data.source", "image_folder"),
                                                                   ("data.path", root))), "data.text_field=caption",
                                        "data.pipeline=[]"]).data)


def test_near_duplicate_images_keep_one_caption(tmp_path):
    root = tmp_path / "dups"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        scene = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
        scene.save(root / f"s{i}.png")
        (root / f"s{i}.txt").write_text(f"scene {i}")
    Image.open(root / "s0.png").save(root / "s0_again.png")
    (root / "s0_again.txt").write_text("the same scene, captioned again")
    over = ["data.source=image_folder", f"data.path={root}", "data.image_size=64", "data.val_fraction=0.0",
            "data.test_fraction=0.0", "data.pipeline=[{step: deduplicate}]"]
    d = load_dataset(load_config(None, over).data)
    assert sorted(d.train.captions) == [f"scene {i}" for i in range(6)]


def test_captioned_shapes_holds_out_pairs_and_its_captions_parse_back():
    cfg = load_config(None, ["data.source=captioned_shapes", "data.image_size=32", "data.limit=1200"]).data
    d = load_dataset(cfg)
    assert d.spec.shape == (3, 32, 32) and d.spec.captioned and d.factor_names == scenes.FACTORS
    assert not scenes.held_out(d.train.factors).any() and not scenes.held_out(d.val.factors).any()
    unseen = scenes.held_out(d.test.factors)
    assert 0.4 < unseen.float().mean() < 0.6 and len(d.test) == 180
    for split in (d.train, d.test):
        assert [scenes.parse(c) for c in split.captions] == split.factors.tolist()
    assert any(c.startswith("two ") for c in d.train.captions) and any(" below a " in c for c in d.train.captions)
    assert scenes.parse("A  large red Triangle above a small blue star.") == [1, 2, 0, 1, 5, 4, 2, 0]
    with pytest.raises(GenlabError, match="prompt: 'a purple square' is not a captioned_shapes caption"):
        scenes.parse("a purple square")
    again = load_dataset(cfg.model_copy(update={"limit": 1200}))
    assert torch.equal(again.test.x, d.test.x) and again.test.captions == d.test.captions


def test_the_judge_reads_real_scenes_of_seen_and_unseen_pairs_and_noise_at_chance():
    judge = adherence.judge()  # the one genlab ships, made by adherence.write_shipped_judge
    d = load_dataset(load_config(None, ["data.source=captioned_shapes", "data.image_size=32",
                                        "data.limit=2000"]).data)
    images, asked = (d.test.x + 1) / 2, d.test.factors
    unseen = scenes.held_out(asked)
    for part in (~unseen, unseen):
        scores = adherence.adherence(judge.read(images[part]), asked[part])
        assert min(scores[k] for k in adherence.ATTRIBUTES) >= 0.97, scores
    noise = adherence.adherence(judge.read(torch.rand_like(images)), asked)
    assert noise["attributes"] < 0.5 and noise["all"] < 0.05
    star = torch.tensor([[0, 4, 1, 1, 0, -1, -1, -1]] * 16)  # a shape the set leaves out: the judge knows it
    assert (judge.read(scenes.render(star, 32, torch.Generator().manual_seed(1)))[:, 1] == 4).float().mean() >= 0.9
    # an image with no object (blank, specks, noise) is read as none, matching no prompt; no real scene is
    nothing = judge.read(adherence.no_object(300, torch.Generator().manual_seed(7)))
    assert (nothing[:, 0] == adherence.NO_OBJECT).float().mean() >= 0.9 and (nothing[:, 1:] == adherence.JUNK).all(
        1).equal(nothing[:, 0] == adherence.NO_OBJECT)
    assert (judge.read(images)[:, 0] == adherence.NO_OBJECT).sum() == 0
    assert adherence.adherence(nothing, asked[:300])["all"] <= 0.05


def test_a_judge_trained_here_learns_the_scenes_and_is_kept_in_the_cache(tmp_path, monkeypatch):
    train = adherence.train_judge
    monkeypatch.setattr(adherence, "train_judge", lambda: train(images=1500, steps=60))
    judge = adherence.judge(tmp_path)  # trained (briefly), then kept
    d = load_dataset(load_config(None, ["data.source=captioned_shapes", "data.image_size=32",
                                        "data.limit=600"]).data)
    scores = adherence.adherence(judge.read((d.test.x + 1) / 2), d.test.factors)
    assert scores["colour"] > 0.6 and scores["count"] > 0.8, scores  # chance: 0.25 and 0.5
    monkeypatch.setattr(adherence, "train_judge", None)  # a second call reads the file; it cannot train
    kept = adherence.judge(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), judge.state_dict().values(), strict=True))
