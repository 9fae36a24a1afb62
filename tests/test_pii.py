"""Personal data found offline: each recognizer's precision and recall on a labelled set of positives and hard
negatives (Luhn-invalid cards, IBANs with a bad checksum, version strings shaped like addresses, dates, ISBNs),
the server redacting, flagging or refusing streamed and unstreamed output alike, and `genlab filter`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from genlab.cli import app
from genlab.responsible.pii import KINDS, find_pii, redact
from genlab.serving.config import ServeConfig
from genlab.serving.guard import OutputFilter

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
