
import pytest
import torch

from genlab import GenlabError, load_config
from genlab.data import SeededBatches, Split, load_dataset

from .conftest import make_folder


def digits(*overrides):
    return load_dataset(load_config(None, list(overrides)).data)


def test_digits_split_is_deterministic_disjoint_stratified_and_in_range():
    a, b = digits(), digits()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.spec.shape == (1, 16, 16) and a.spec.num_classes == 10
    assert a.train.x.min() >= -1 and a.train.x.max() <= 1 and a.train.x.min() < -0.9 and a.train.x.max() > 0.9
    # every class in every split, in roughly its share
    for split in (a.val, a.test):
        counts = torch.bincount(split.y, minlength=10)
        assert counts.min() >= 15
    flat = lambda s: {tuple(r) for r in s.x.flatten(1).numpy().round(4)}  # noqa: E731
    assert not flat(a.test) & flat(a.val), "no image is in two held-out splits"
    other = digits("data.split_seed=1")
    assert not torch.equal(other.test.y, a.test.y)


def test_image_size_and_channels():
    d = digits("data.image_size=32", "data.channels=3")
    assert d.spec.shape == (3, 32, 32)


def test_image_folder_classes_from_subfolders_and_corrupt_files_skipped(tmp_path, caplog):
    make_folder(tmp_path, corrupt=True)
    cfg = load_config(None, ["data.source=image_folder", f"data.path={tmp_path}", "data.image_size=8"]).data
    d = load_dataset(cfg)
    assert "validate: not a readable image: 1, e.g. dogs/broken.png" in caplog.text
    assert d.spec.class_names == ("cats", "dogs") and d.spec.shape == (3, 8, 8)
    assert len(d.train) + len(d.val) + len(d.test) == 20, "every valid image is kept"
    assert any("broken.png" in n for n in d.notes)


@pytest.mark.parametrize("path, message", [(None, "data.path: required"), ("/no/such/dir", "/no/such/dir does not")])
def test_image_folder_errors_name_the_key(path, message):
    over = ["data.source=image_folder"] + ([f"data.path={path}"] if path else [])
    with pytest.raises(GenlabError, match=message):
        load_dataset(load_config(None, over).data)


def test_image_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GenlabError, match=r"nothing is left.*not a readable image: 1, e.g. notes.txt \("):
        load_dataset(load_config(None, ["data.source=image_folder", f"data.path={tmp_path}"]).data)


def test_seeded_batches_resume_from_state_draws_the_same_batches():
    split = Split(torch.arange(50.0)[:, None], torch.arange(50))
    full = SeededBatches(split, batch_size=8, seed=3)
    first = [b["y"] for _, b in zip(range(9), _forever(full))]  # crosses an epoch boundary (6 per epoch)
    resumed = SeededBatches(split, batch_size=8, seed=3)
    partial = SeededBatches(split, batch_size=8, seed=3)
    head = [b["y"] for _, b in zip(range(4), _forever(partial))]
    resumed.load_state_dict(partial.state_dict())
    tail = [b["y"] for _, b in zip(range(5), _forever(resumed))]
    assert all(torch.equal(x, y) for x, y in zip(first, head + tail))
    assert not torch.equal(first[0], first[6]), "each epoch is reshuffled"
    assert sorted(torch.cat(first[:6]).tolist()) == sorted(set(torch.cat(first[:6]).tolist())), "no repeats in an epoch"


def _forever(batches):
    while True:
        yield from batches


def test_seeded_batches_shard_disjointly_across_ranks():
    split = Split(torch.arange(48.0)[:, None], torch.arange(48))
    ranks = [SeededBatches(split, batch_size=4, seed=0, rank=r, world=3) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)
    seen = [torch.cat([b["y"] for b in r]) for r in ranks]
    assert sorted(torch.cat(seen).tolist()) == list(range(48)), "one epoch over all ranks covers the data once"
