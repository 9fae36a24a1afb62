"""The copy index: 50+ character copies of the training text are found exactly, near misses are not, in a
whole text and in a stream split anywhere; it travels in the model folder and refuses a file that is not one."""

import numpy as np
import pytest

from genlab.errors import GenlabError
from genlab.responsible.filters import chosen_kinds, find
from genlab.responsible.memorization import INDEX_FILE, WINDOW, CopyIndex
from genlab.serving.config import ServeConfig
from genlab.serving.filters import OutputFilter

TRAINING = [
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little.",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled with the ends of worms.",
]
OWN = "My own words, which no book holds, go on for a while here so that the copy sits inside them. "


def _labelled() -> list[tuple[str, bool]]:
    """(text, holds a 50+ character copy?): copies of several lengths and places; near misses of each kind."""
    first, second, third = TRAINING
    alter = "".join(("y" if c == "x" else "x") if i % 40 == 20 else c for i, c in enumerate(second))  # a typo in 40
    return [
        (OWN + first[:WINDOW] + OWN, True),  # exactly the shortest copy
        (OWN + second[30:180] + OWN, True),
        (first[-60:] + OWN, True),  # at the start of the text
        (OWN + third[:70], True),  # at its end
        (OWN + first[:60] + " and " + second[:60], True),  # two copies
        (OWN + first[: WINDOW - 1] + OWN, False),  # one character short
        (OWN + alter + OWN, False),  # a close paraphrase: no 50 characters agree
        (OWN + '"It was the best of times," she said, "it was the age of wisdom."', False),  # quoted phrases
        (first[-30:] + second[:30], False),  # the end of one document and the start of the next is no copy
        (OWN * 3, False),
    ]


def test_copies_of_fifty_characters_are_found_exactly_and_near_misses_are_not():
    index = CopyIndex.build(TRAINING)
    found = {text: index.find_copies(text) for text, _ in _labelled()}
    tp = sum(bool(found[t]) and copy for t, copy in _labelled())
    fp = sum(bool(found[t]) and not copy for t, copy in _labelled())
    fn = sum(not found[t] and copy for t, copy in _labelled())
    assert (tp, fp, fn) == (5, 0, 0)  # precision 1.0, recall 1.0 on the labelled set
    text = OWN + TRAINING[1][30:180] + OWN
    (span,) = found[text]
    assert (span.start, span.end) == (len(OWN), len(OWN) + 150) and span.text == TRAINING[1][30:180]
    assert len(found[OWN + TRAINING[0][:60] + " and " + TRAINING[1][:60]]) == 2
    assert index.find_copies(text, min_chars=151) == [] and index.find_copies(text, min_chars=150)
    with pytest.raises(GenlabError, match="min_chars: 20"):
        index.find_copies(text, min_chars=20)
    assert index.copied_share([text, OWN, TRAINING[2]]) == pytest.approx(2 / 3)


def test_the_index_round_trips_through_a_folder_and_names_a_file_that_is_not_one(tmp_path):
    index = CopyIndex.build(TRAINING)
    assert CopyIndex.load(tmp_path) is None
    index.save(tmp_path)
    loaded = CopyIndex.load(tmp_path)
    assert np.array_equal(loaded.hashes, index.hashes) and len(loaded) == sum(len(d) - WINDOW + 1 for d in TRAINING)
    np.save(tmp_path / INDEX_FILE, np.arange(4.0))
    with pytest.raises(GenlabError, match="not a genlab copy index"):
        CopyIndex.load(tmp_path)


@pytest.mark.parametrize("action", ["redact", "refuse"])
def test_a_stream_never_releases_a_copy_whatever_its_split(action):
    index = CopyIndex.build(TRAINING)
    text = OWN + TRAINING[1][30:180] + " And then my own ending."
    filters = ServeConfig.model_validate({"filters": [{"type": "memorized", "action": action}]}).filters
    whole = OutputFilter(filters, index)
    expected = whole.feed(text) + whole.finish()
    if action == "redact":
        assert expected == OWN + "[MEMORIZED] And then my own ending."
    else:  # what came before the copy may have gone out; nothing of the copy did
        assert whole.verdict.action == "refuse" and OWN.startswith(expected)
    for size in (1, 4, 9, 50):
        streamed = OutputFilter(filters, index)
        pieces = [streamed.feed(text[i : i + size]) for i in range(0, len(text), size)]
        got = "".join(pieces) + streamed.finish()
        assert streamed.verdict.action == action and TRAINING[1][30:90] not in got
        assert got == expected if action == "redact" else OWN.startswith(got)
    with pytest.raises(GenlabError, match="copy index"):
        OutputFilter(filters, None)
    with pytest.raises(ValueError, match="min_chars"):
        ServeConfig.model_validate({"filters": [{"type": "memorized", "min_chars": 20}]})


def test_the_library_filter_joins_overlapping_findings_and_asks_for_the_model():
    index = CopyIndex.build(["Write to jane@example.com about the order of the forty boxes that came by sea today."])
    text = "Please: write to jane@example.com about the order of the forty boxes that came by sea today!"
    kinds = chosen_kinds(["email", "memorized"], index)
    (joined,) = find(text, kinds, copies=index)  # the email inside the copy is one finding with it
    assert joined.kind in ("email", "memorized") and text[joined.start:joined.end].startswith("rite to jane@")
    with pytest.raises(GenlabError, match="--kind memorized: name the model"):
        chosen_kinds(["memorized"])
    assert "memorized" in chosen_kinds((), index) and "memorized" not in chosen_kinds(())



def test_a_model_that_returns_training_text_is_told_from_one_that_returns_held_out_text():
    from genlab.config import load_config
    from genlab.data import load_dataset

    plays = load_dataset(load_config(None, ["data.source=tinyshakespeare"]).data)
    index = CopyIndex.build(plays.train.x)
    seen, unseen = "".join(plays.train.x), "".join(plays.val.x)
    copying = [seen[s : s + 200] for s in range(0, 200 * 997, 997)]  # a "model" that recites its training text
    honest = [unseen[s : s + 200] for s in range(0, len(unseen) - 200, 500)]  # one that writes new lines
    assert index.copied_share(copying) == 1.0 and index.copied_share(honest) <= 0.02
