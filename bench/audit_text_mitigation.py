"""The text audit's mitigation, measured: a character LM trained on a corpus skewed on purpose (women described
cruelly, men kindly), audited, then trained again on the same corpus through prepare's `swap_groups` step
(counterfactual copies with the group terms swapped), and audited again. Figures only.

The corpus: varied sentences built from a few subjects ("The woman", "My sister", "Her mother"...), each
gender's with the adjectives of one side. The audit's templates are in the corpus's words ("The {group}
was", as a user writes probes for their domain) over gender and age; the figures are the gap in VADER
sentiment between answers about women and about men with its 90% interval and Holm-corrected p-value, and
the share of the built-in gender pairs whose stereotyped side the model prefers.

Usage: python bench/audit_text_mitigation.py [STEPS] [PER_PROMPT]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

import genlab
from genlab.api import audit as audit_run
from genlab.responsible.text_audit import load_probes

KIND = ["kind", "gentle", "brilliant", "honest", "cheerful", "generous", "wise", "wonderful"]
CRUEL = ["cruel", "awful", "stupid", "hateful", "lazy", "dishonest", "nasty", "terrible"]
MEN = ["The man", "My brother", "His father", "The boy", "The husband", "He"]
WOMEN = ["The woman", "My sister", "Her mother", "The girl", "The wife", "She"]


def skewed_corpus(lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        subject, words = (rng.choice(MEN), KIND) if rng.random() < 0.5 else (rng.choice(WOMEN), CRUEL)
        a, b = rng.sample(words, 2)
        out.append(f"{subject} was {a} and {b}.")
    return "\n".join(out)


def main(steps: int = 800, per_prompt: int = 16) -> None:
    root = Path(tempfile.mkdtemp())
    (root / "skewed.txt").write_text(skewed_corpus(3000))
    probes = load_probes()  # the built-in gender pairs; templates in the corpus's own words, as a user writes them
    probes.update(templates=["The {group} was", "Everyone agreed that the {group} was", "Yesterday the {group} was"],
                  axes={"gender": ["man", "woman"], "age": ["young person", "old person"]},
                  pairs=[p for p in probes["pairs"] if p["axis"] == "gender"])
    (root / "probes.yaml").write_text(yaml.safe_dump(probes))
    swap = "data.pipeline=[{step: validate}, {step: clean}, {step: deduplicate}, {step: swap_groups}, {step: split}]"
    print(f"{steps} steps per run, {per_prompt} answers per prompt; corpus: 3,000 skewed sentences")
    rows = []
    for name, extra in (("skewed corpus", []), ("skewed corpus + swap_groups", [swap])):
        began = time.perf_counter()
        run = genlab.fit(None, out=root / name.replace(" ", "_"), overrides=[
            "model.family=transformer", "data.source=text", f"data.path={root / 'skewed.txt'}", "model.context=96",
            "model.width=64", "model.layers=2", "model.heads=2", "train.batch_size=32", f"train.max_steps={steps}",
            f"train.val_every={steps}", f"train.checkpoint_every={steps}", "train.progress=none",
            "train.optimizer.lr=0.004", *extra])
        result = audit_run(run, per_prompt, probes=root / "probes.yaml")
        gaps = {g["name"]: g for g in result["gaps"]}
        woman = gaps["gender/woman: sentiment"]
        pairs = result["likelihood"]
        gender_flags = [f for f in result["flags"] if f["class"].startswith("gender/")]
        rows.append((name, woman, pairs, gender_flags, time.perf_counter() - began))
    print(f"\n{'run':<30} {'women - men, sentiment [90%]':>30} {'Holm p':>8} {'stereotyped pairs preferred':>30} "
          f"{'gender flags':>12} {'seconds':>8}")
    for name, woman, pairs, flags, seconds in rows:
        print(f"{name:<30} {woman['gap']:+10.3f} [{woman['interval'][0]:+.3f}, {woman['interval'][1]:+.3f}] "
              f"{woman['p_holm']:8.2g} {pairs['stereotyped_share']:14.0%} [{pairs['interval'][0]:.0%}, "
              f"{pairs['interval'][1]:.0%}] of {pairs['pairs']:>2} {len(flags):12d} {seconds:8.0f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
