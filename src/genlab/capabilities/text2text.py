"""Turn text into text (encoder-decoders): `genlab translate RUN FILE` and `genlab.translate_file` over a JSONL file,
the text routes (capabilities/text.py: a completion's prompt, or a chat's last user message, is the source), and
`genlab evaluate`'s BLEU, chrF, ROUGE-L and exact match beside copying the source (evaluation/seq2seq.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from genlab.capabilities import Capability, Done, Verb, check_has
from genlab.capabilities.text import ServedText, TextModel
from genlab.config.section import Section
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.quiet import quiet
from genlab.run import Run, as_run
from genlab.serving.generation import Ask
from genlab.serving.guard import Refused

log = logging.getLogger("genlab.serve")


class Seq2SeqModel(TextModel, Protocol):
    def sample(self, n: int, *, generator: Any = None, source: str | list[str] = "", **options: Any) -> list[str]: ...


# --- the verb and its API function ---------------------------------------------------------------------------


class SourcesFile(Section):
    source: Path = Field(description="A JSONL file of records, each with the text in data.source_field.")
    out: Path | None = Field(None, description="Where to write the records with a `prediction` (JSONL); "
                                               "default: the terminal.")
    seed: int = Field(0, ge=0, description="Same seed, same predictions.")


@quiet
def translate_file(run: Run | str | Path, source: str | Path, out: str | Path | None = None, *, seed: int = 0,
                   **options: Any) -> list[dict[str, Any]]:
    """Each record of a JSONL file with the model's output for its `data.source_field` as its `prediction` (written
    to `out` as JSONL when given); the run's own sampling options, updated by `options`. A bad line is named."""
    run = as_run(run)
    check_has(run.config.model.family, "text2text", run.path)
    field, path = run.config.data.source_field, Path(source)
    if not path.is_file():
        raise GenlabError(f"source: {path} is not a file")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise GenlabError(f"source: {path}:{number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise GenlabError(f"source: {path}:{number} has no text field {field!r} (data.source_field)")
            records.append(record)
    predictions = run.sample(len(records), seed=seed, source=[r[field] for r in records], **options) if records else []
    done = [{**r, "prediction": p} for r, p in zip(records, predictions, strict=True)]
    if out is not None:
        Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done))
    return done


def translate_command(run: Run, source: Path, out: Path | None = None, seed: int = 0, **options: Any) -> Done:
    records = translate_file(run, source, out, seed=seed, **options)
    if out is None:
        return Done([json.dumps(r, ensure_ascii=False) for r in records])
    return Done([f"wrote {len(records)} predictions to {out}"])


# --- serving ---------------------------------------------------------------------------------------------------


class ServedSeq2Seq(ServedText):
    """Choices with the same options share one `generate` call; each is one whole delta."""

    kind = "text2text"

    def run_batch(self, key: Any, items: list[Any]) -> list[str]:
        import torch

        options = dict(key)
        sources = [source for source, _ in items]
        if options["temperature"] == 0:  # no randomness: one call for the batch
            return self.model.sample(len(items), source=sources, **options)
        generators = [torch.Generator().manual_seed(seed) for _, seed in items]
        return self.model.sample(len(items), source=sources, generator=generators, **options)

    def encode(self, text: str | list[int]) -> list[int]:
        if not isinstance(text, str):
            raise GenlabError("prompt: an encoder-decoder takes text, not token ids")
        return self.model.tokenizer(text)["input_ids"]

    def generate(self, ids: list[int], prompt: str | list[int], options: dict[str, Any], seed: int | None, ask: Ask,
                 emit: Callable[[tuple], None]) -> _Queued:
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
        future = self.submit(key, [(prompt, seed or 0)])

        def done(f: Any) -> None:
            if f.cancelled():  # its client left before it started
                return
            if f.exception() is not None:
                log.error("%s: generation failed", self.name, exc_info=f.exception())
                emit(("error", "generation failed"))
                return
            text = f.result()[0]  # cut at a stop string by the model already
            tokens = len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])
            emit(("delta", text))
            emit(("done", "stop" if tokens < options["max_new_tokens"] else "length", len(ids), tokens,
                  getattr(f, "batch_size", 1)))
        future.add_done_callback(done)
        return _Queued(future, self.charge(options))

    def charge(self, options: dict[str, Any]) -> int:
        """A beam search keeps `num_beams` sequences: each costs its tokens."""
        return options["max_new_tokens"] * options.get("num_beams", 1)

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        """An encoder-decoder answers the last user message."""
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise Refused(400, "messages: a seq2seq model needs a user message to transform", code="invalid_value")
        return users[-1], ()


class _Queued:
    """A choice's job: cancelling it drops it if it has not started (a whole-output call cannot stop midway)."""

    def __init__(self, future: Future, cost: int) -> None:
        self.future, self.cost = future, cost

    @property
    def generated(self) -> int:
        """What it is charged when its client leaves: nothing if it never started, else all it may generate."""
        return 0 if self.future.cancelled() else self.cost

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        if value:
            self.future.cancel()


CAPABILITY = Capability(
    "text2text", Seq2SeqModel,
    verbs=(Verb("translate", "Each record of a JSONL file with its `prediction`, in order; a bad line is named.",
                SourcesFile, translate_command, inputs=("source",), sampling=True),),
    served=ServedSeq2Seq, evaluator="genlab.evaluation.seq2seq:evaluate_pairs",
    headline=tuple(Figure(key, label, True, (f"copy_source_baseline.{key}", "copying the source"))
                   for key, label in (("chrf", "chrF"), ("bleu", "BLEU"), ("exact_match", "exact match"))),
    audit="genlab.responsible.text_audit:audit_text", hub_task="text2text-generation")
