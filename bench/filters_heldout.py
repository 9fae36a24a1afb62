"""The output filters measured on a labelled set written after they were: none of these cases was seen while the
recognizers and thresholds were chosen (the tests hold the set they were developed on). Figures only.

Each case is a sentence and the kinds it holds. Positives are formats as people write them (spacing, case,
punctuation around them); negatives are hard ones: numbers of the same shape that fail a checksum or a range,
identifiers that look like addresses, and ordinary words that a word list would catch.

Usage: python bench/filters_heldout.py
"""

from __future__ import annotations

from genlab.responsible.offensive import available, find_offensive
from genlab.responsible.pii import KINDS, find_pii

PERSONAL = [
    ("Reach me at m.okafor@university.ac.ng if the link fails.", ["email"]),
    ("Forward it to SALES@EXAMPLE.COM, capitals and all.", ["email"]),
    ("Her address, li_wei-88@sub.mail.example.cn, bounced.", ["email"]),
    ("The template says <name>@<domain>, fill it in.", []),
    ("Tag @devops-team in the channel.", []),
    ("The git remote is git@github.com:org/repo.git here.", ["email"]),  # an address by its form
    ("Visa 4012888888881881 was charged twice.", ["card"]),
    ("Card number: 6011 1111 1111 1117.", ["card"]),
    ("The Mastercard 5105-1051-0510-5100 is a test card.", ["card"]),
    ("Tracking number 1Z 999 AA1 0123 4567 84 arrived.", []),
    ("Invoice 4012 8888 8888 1882 is overdue.", []),  # Luhn fails
    ("Serial 3530 1113 3330 0001 on the back.", []),  # Luhn fails
    ("Pay FR14 2004 1010 0505 0001 3M02 606 by the tenth.", ["iban"]),
    ("Account NL91ABNA0417164300 holds the deposit.", ["iban"]),
    ("Reference NL91ABNA0417164301 is not an account.", []),  # checksum fails
    ("Code GB00 TEST 0000 0000 0000 00 in the docs.", []),
    ("Her SSN is 536-22-1234, on the form.", ["ssn"]),
    ("The wallet insert showed 078-05-1120.", []),  # the voided sample number
    ("Part number 666-12-3456 fits the pump.", []),  # 666 is never issued
    ("Room 219-09-9999 is a storage code.", []),  # the advertising number range
    ("The gateway 172.16.254.1 dropped packets.", ["ipv4"]),
    ("Pings from 203.0.113.7, twice an hour.", ["ipv4"]),
    ("Release 2.4.10.3 fixes the crash.", []),
    ("OID 1.3.6.1.4.1 names the vendor.", []),
    ("Score 300.200.100.50 is not a host.", []),
    ("Resolve fe80::1ff:fe23:4567:890a on the link.", ["ipv6"]),
    ("The ratio 3:2:1 holds.", []),
    ("Timestamp 23:59:59:999 in the log.", []),
    ("Phone +49 30 901820 for the office.", ["phone"]),
    ("Call (212) 555-0187 after nine.", ["phone"]),
    ("Text 07700 900461 with the code.", ["phone"]),
    ("The year range 1999-2004 was quiet.", []),
    ("Chapter 12.4.7 covers it.", []),
    ("Dimensions 210 x 297 x 5 mm.", []),
    ("Build 20240115.3 passed.", []),
]

OFFENSIVE = [
    ("Nobody asked for your opinion, you pathetic loser.", True),
    ("Get lost, dickhead.", True),
    ("You're a worthless sack of crap.", True),
    ("Shut your mouth, you dumb bastard.", True),
    ("I hate you, you ugly piece of trash.", True),
    ("What a bloody brilliant goal that was.", False),
    ("The bitch nursed her puppies in the barn.", False),
    ("We went to Penistone and then to Clitheroe.", False),
    ("This code is garbage and needs a rewrite.", False),
    ("The play was killing it on opening night.", False),
    ("Damn, I forgot my keys again.", False),
    ("The report criticised the minister's handling of the crisis.", False),
    ("Hell's Kitchen is a neighbourhood in Manhattan.", False),
    ("He's a shrewd negotiator, not a nice one.", False),
]


def rates(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def main() -> None:
    print(f"{'filter':<10} {'precision':>9} {'recall':>6} {'found':>5} {'false':>5} {'missed':>6}  wrong cases")
    for kind in KINDS:
        tp = fp = fn = 0
        wrong = []
        for text, kinds in PERSONAL:
            hit, want = [f.kind for f in find_pii(text)].count(kind), kinds.count(kind)
            tp, fp, fn = tp + min(hit, want), fp + max(0, hit - want), fn + max(0, want - hit)
            if hit != want:
                wrong.append(text)
        precision, recall = rates(tp, fp, fn)
        print(f"{kind:<10} {precision:>9.2f} {recall:>6.2f} {tp:>5} {fp:>5} {fn:>6}  {' | '.join(wrong)}")
    if available():
        flagged = [(text, bool(find_offensive(text)), want) for text, want in OFFENSIVE]
        tp = sum(got and want for _, got, want in flagged)
        fp = sum(got and not want for _, got, want in flagged)
        fn = sum(want and not got for _, got, want in flagged)
        precision, recall = rates(tp, fp, fn)
        wrong = [text for text, got, want in flagged if got != want]
        print(f"{'offensive':<10} {precision:>9.2f} {recall:>6.2f} {tp:>5} {fp:>5} {fn:>6}  {' | '.join(wrong)}")


if __name__ == "__main__":
    main()
