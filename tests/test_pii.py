"""Personal data found offline: each recognizer's precision and recall on a labelled set of positives and hard
negatives (Luhn-invalid cards, IBANs with a bad checksum, version strings shaped like addresses, dates, ISBNs),
the server redacting, flagging or refusing streamed and unstreamed output alike, and `genlab filter`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.responsible.pii import KINDS, find_pii, redact
from genlab.serving.config import ServeConfig
from genlab.serving.filters import OutputFilter

# (text, the kinds it holds) -- every positive is a real format; every negative looks like one
LABELLED = [
    ("write to jane.doe@example.co.uk today", ["email"]),
    ("ops+alerts@mail.example.org is paged", ["email"]),
    ("the handle @jane_doe on the forum", []),
    ("see docs at example.com/user@home", []),
    ("card 4111 1111 1111 1111 expires", ["card"]),
    ("paid with 5500-0000-0000-0004", ["card"]),
    ("amex 378282246310005 on file", ["card"]),
    ("card 4111 1111 1111 1112 (mistyped)", []),
    ("order 1234 5678 9012 3456 shipped", []),
    ("all zeros 0000 0000 0000 0000", []),
    ("IBAN GB82 WEST 1234 5698 7654 32 please", ["iban"]),
    ("to DE89370400440532013000 by Friday", ["iban"]),
    ("IBAN GB82 WEST 1234 5698 7654 33 (typo)", []),
    ("ssn 123-45-6789 on the form", ["ssn"]),
    ("case 000-12-3456 closed", []),
    ("the server at 192.168.1.20 answered", ["ipv4"]),
    ("from 8.8.8.8 and 10.0.0.1", ["ipv4", "ipv4"]),
    ("upgrade to version 1.2.3.4 now", []),
    ("Python 3.11.7.1 build", []),
    ("not an address: 999.10.10.10", []),
    ("host 2001:db8::8a2e:370:7334 is up", ["ipv6"]),
    ("at 12:30:45 sharp", []),
    ("call +1 415-555-0132 now", ["phone"]),
    ("ring (020) 7946 0958 after six", ["phone"]),
    ("dial 415.555.0132", ["phone"]),
    ("+44 20 7946 0958 is the desk", ["phone"]),
    ("on 2024-01-15 at 10:30", []),
    ("ISBN 978-3-16-148410-0", []),
    ("see page 123-4567 of the manual", []),
    ("zip 94103-1234", []),
    ("it costs 1,234,567.89 dollars", []),
]


def test_each_recognizer_is_precise_and_complete_on_the_labelled_set():
    table = {kind: [0, 0, 0] for kind in KINDS}  # true positives, false positives, false negatives
    for text, kinds in LABELLED:
        found = [f.kind for f in find_pii(text)]
        for kind in KINDS:
            hit, want = found.count(kind), kinds.count(kind)
            table[kind][0] += min(hit, want)
            table[kind][1] += max(0, hit - want)
            table[kind][2] += max(0, want - hit)
    for kind, (tp, fp, fn) in table.items():
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        print(f"{kind:<6} precision {precision:.2f} recall {recall:.2f} ({tp} found, {fp} false, {fn} missed)")
        assert tp and precision == 1.0 and recall == 1.0, kind
    assert redact("a jane@x.org b", find_pii("a jane@x.org b")) == "a [EMAIL] b"


@pytest.mark.parametrize("action", ["redact", "flag", "refuse"])
def test_the_server_filter_acts_alike_on_any_split_of_the_stream(action):
    filters = ServeConfig.model_validate({"filters": [{"type": "pii", "action": action}]}).filters
    text = "Write to jane.doe@example.com or call +1 415-555-0132; card 4111 1111 1111 1111. Then the story goes on."
    whole = OutputFilter(filters)
    expected = whole.feed(text) + whole.finish()
    for size in (1, 2, 3, 7):  # token-sized pieces: nothing is released before it is judged
        streamed = OutputFilter(filters)
        pieces = [streamed.feed(text[i : i + size]) for i in range(0, len(text), size)]
        got = "".join(pieces) + streamed.finish()
        assert streamed.verdict.action == action
        if action == "refuse":  # what went out before the finding arrived stays out; the finding never does
            assert text.startswith(got) and len(got) <= text.index("jane.doe")
        else:
            assert got == expected
    if action == "redact":
        assert expected == "Write to [EMAIL] or call [PHONE]; card [CARD]. Then the story goes on."
    elif action == "flag":
        assert expected == text
    else:
        assert expected == ""


def test_genlab_filter_lists_redacts_and_gates(tmp_path):
    source = tmp_path / "out.txt"
    source.write_text("fine line\nmail jane@example.com\nversion 1.2.3.4 only\n")
    listed = CliRunner().invoke(app, ["filter", str(source)])
    assert listed.exit_code == 0 and f"{source}:2:6: email" in listed.output and "1 finding(s)" in listed.output
    redacted = CliRunner().invoke(app, ["filter", str(source), "--action", "redact", "--out", str(tmp_path / "r")])
    assert redacted.exit_code == 0 and (tmp_path / "r").read_text().splitlines()[1] == "mail [EMAIL]"
    assert CliRunner().invoke(app, ["filter", str(source), "--action", "refuse"]).exit_code == 3
    bad = CliRunner().invoke(app, ["filter", str(source), "--kind", "passport"])
    assert bad.exit_code == 1 and "--kind: passport not one of" in bad.output


# (sentence, offensive?) -- positives are insults and abuse; negatives are hard: place names and words that hold
# a swear word's letters, older senses of words, violence in ordinary speech, criticism without abuse
OFFENSIVE = [
    ("You are a fucking idiot.", True),
    ("Shut up, you stupid bitch.", True),
    ("What a worthless piece of shit you are.", True),
    ("Go to hell, you moron.", True),
    ("This asshole never listens.", True),
    ("Fuck off and leave me alone.", True),
    ("You dumb bastard, look what you did.", True),
    ("He is a pathetic loser and a dick.", True),
    ("Nobody likes you, you ugly cunt.", True),
    ("Stop being such a whiny little prick.", True),
    ("Scunthorpe United won the match on Saturday.", False),
    ("The cock crowed at dawn on the farm.", False),
    ("She read the assassin's creed of the old order.", False),
    ("The hikers saw a great tit and a blue jay.", False),
    ("I could murder a cup of tea right now.", False),
    ("The movie was a killer, we loved it.", False),
    ("The report was poorly written and late.", False),
    ("I strongly disagree with your argument.", False),
    ("The dam on the river burst after the storm.", False),
    ("Essex and Middlesex are English counties.", False),
    ("He used a spanner to fix the bike.", False),
    ("The weather today is grey and cold.", False),
    ("Please pass the salt and the pepper.", False),
    ("Her analysis missed the main point.", False),
]


def test_the_offensive_filter_is_measured_on_labelled_sentences_with_hard_negatives():
    from genlab.responsible.offensive import find_offensive

    found = [bool(find_offensive(text)) for text, _ in OFFENSIVE]
    truth = [label for _, label in OFFENSIVE]
    tp = sum(f and t for f, t in zip(found, truth, strict=True))
    fp = sum(f and not t for f, t in zip(found, truth, strict=True))
    fn = sum(t and not f for f, t in zip(found, truth, strict=True))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    print(f"offensive precision {precision:.2f} recall {recall:.2f} ({tp} found, {fp} false, {fn} missed)")
    assert precision >= 0.9 and recall >= 0.8, (precision, recall)


@pytest.mark.parametrize("action", ["redact", "refuse"])
def test_offensive_sentences_are_judged_whole_as_they_stream(action):
    filters = ServeConfig.model_validate({"filters": [{"type": "offensive", "action": action}]}).filters
    text = "The weather is fine today. You are a fucking idiot. Then the story goes on"
    whole = OutputFilter(filters)
    expected = whole.feed(text) + whole.finish()
    for size in (1, 3, 7):
        streamed = OutputFilter(filters)
        got = "".join(streamed.feed(text[i : i + size]) for i in range(0, len(text), size)) + streamed.finish()
        assert streamed.verdict.action == action
        if action == "refuse":  # the sentence before went out; nothing of the offensive one did
            assert got == "" or got.strip() == "The weather is fine today."
        else:
            assert got == expected
    assert expected == ("The weather is fine today. [OFFENSIVE] Then the story goes on" if action == "redact" else "")


def test_genlab_filter_finds_offensive_lines_and_says_what_is_unknown(tmp_path):
    source = tmp_path / "out.txt"
    source.write_text("a calm line\nyou are a fucking idiot\n")
    listed = CliRunner().invoke(app, ["filter", str(source), "--kind", "offensive", "--action", "redact"])
    assert listed.exit_code == 0 and f"{source}:2:1: offensive" in listed.output
    assert (tmp_path / "out.redacted.txt").read_text() == "a calm line\n[OFFENSIVE]\n"
    with pytest.raises(ValueError, match="threshold"):
        ServeConfig.model_validate({"filters": [{"type": "offensive", "threshold": 2}]})
