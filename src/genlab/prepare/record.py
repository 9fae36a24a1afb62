"""What `genlab prepare` passes between steps (items with their provenance) and what each step records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5  # removals shown per reason in the report
SPLITS = ("train", "val", "test")


@dataclass
class Item:
    """One example and where it came from (file, file:line), through every step."""

    where: str
    value: Any  # text: str; image: a PIL image, then a uint8 array (H, W, C)
    label: str | None = None
    caption: str | None = None  # an image's text, when the data is captioned
    cluster: int | None = None  # near-duplicate cluster, when deduplicate groups rather than removes
    split: int | None = None  # set when read: a piece of one long text file, which is cut by position
    continues: bool = False  # a piece that joins the one before it in its split (the same document)
    hashes: tuple | None = None  # (exact digest, near hash) for deduplicate, once computed where the item was read


@dataclass
class StepLog:
    """What one step kept, changed and removed, with a few examples of each removal by reason."""

    step: str
    kept: int = 0
    changed: int = 0
    removed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    megabytes: float = 0.0  # of input the step read: its MB/s in the report

    gone: list[tuple[str, str]] = field(default_factory=list, repr=False)  # every removal: removed.jsonl

    def remove(self, reason: str, where: str) -> None:
        self.removed += 1
        self.gone.append((reason, where))
        self._example(reason, where)

    def change(self, reason: str, where: str) -> None:
        """A change worth naming in the report (a cell emptied), not a removal."""
        self.changed += 1
        self._example(reason, where)

    def _example(self, reason: str, where: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(where)

    def as_dict(self) -> dict:
        return {"step": self.step, "kept": self.kept, "changed": self.changed, "removed": self.removed,
                "reasons": self.reasons, "examples": self.examples, "notes": self.notes,
                "seconds": round(self.seconds, 3), "megabytes": round(self.megabytes, 3)}


def merged(logs: list[StepLog]) -> StepLog:
    """One step's logs from several blocks, in the blocks' order, as one log of the whole input."""
    out = StepLog(logs[0].step)
    for log in logs:
        out.kept, out.changed, out.removed = out.kept + log.kept, out.changed + log.changed, out.removed + log.removed
        out.seconds, out.megabytes = out.seconds + log.seconds, out.megabytes + log.megabytes
        for reason, n in log.reasons.items():
            out.reasons[reason] = out.reasons.get(reason, 0) + n
            shown = out.examples.setdefault(reason, [])
            shown += log.examples[reason][:EXAMPLES - len(shown)]
        out.notes += [note for note in log.notes if note not in out.notes]
        out.gone += log.gone
    return out
