"""A model card for a run: `model/README.md` in the Hugging Face format (YAML metadata, then prose), from what
the run directory holds: the config, train.json, the prepared data's summary, metrics.json and audit.json.

    genlab card RUN [--license L]   -> RUN/model/README.md (export copies it with the model folder)

What a run lacks is said, not guessed: a run never evaluated says so and names the command that would. What the
run's capabilities declare (headline figures, the Hub's task, whether an audit exists) comes in as `Declared`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genlab.errors import GenlabError
from genlab.run import Run

CARD = "README.md"


@dataclass(frozen=True)
class Declared:
    """What the run's capabilities say of it: its headline figures, its task on the Hub, whether it has an audit."""

    headline: tuple = ()
    hub_task: str | None = None
    audited: bool = False


def write_card(run: Run, declared: Declared, license: str = "other") -> Path:
    """Write (or rewrite) the run's model card into its model folder; returns the file."""
    from huggingface_hub import ModelCard

    if not run.paths.model.is_dir():
        raise GenlabError(f"card: {run.path} has no model folder yet; finish `genlab fit` first")
    card = ModelCard(f"---\n{yaml.safe_dump(metadata(run, declared, license), sort_keys=False)}---\n\n"
                     f"{body(run, declared)}")
    path = run.paths.model / CARD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(card))
    tmp.replace(path)
    return path


def metadata(run: Run, declared: Declared, license: str) -> dict[str, Any]:
    """The card's YAML header: license, library, task, tags, data set, and the headline metrics as a model-index."""
    model, cfg = run.model, run.config
    figures = [(f, f.value(run.metrics)) for f in declared.headline] if run.paths.metrics.is_file() else []
    figures = [(f, v) for f, v in figures if isinstance(v, int | float)]
    meta: dict[str, Any] = {"license": license, "library_name": model.hub_library}
    task = model.hub_task or declared.hub_task
    if task:
        meta["pipeline_tag"] = task
    meta["tags"] = ["genlab", cfg.model.family, model.media.name]
    meta["datasets"] = [_data_name(run)]
    if figures:
        meta["metrics"] = [f.key.split(".")[-1] for f, _ in figures]
        meta["model-index"] = [{"name": cfg.name, "results": [{
            "task": {"type": task or "other"},
            "dataset": {"type": _data_name(run), "name": _data_name(run), "split": run.metrics.get("real_split",
                                                                                                      "test")},
            "metrics": [{"type": f.key.split(".")[-1], "name": f.label, "value": round(float(v), 6)}
                        for f, v in figures]}]}]
    return meta


def body(run: Run, declared: Declared) -> str:
    cfg, summary, model = run.config, run.summary, run.model
    data = summary.get("data", {})
    parts = [f"# {cfg.name}\n",
             f"A model of genlab's `{cfg.model.family}` family ({model.num_parameters():,} parameters), trained on "
             f"{_data_name(run)}. It draws {model.media.name} like its training data, and nothing else.\n",
             "## Training data\n", _data_section(run, data),
             "## Training\n", _training_section(run, summary),
             "## Evaluation\n", _evaluation_section(run, declared),
             "## Responsible AI\n", _audit_section(run, declared),
             "## Intended use and limitations\n", _limits(run, data),
             "## How to use\n", _usage(run)]
    return "\n".join(parts) + "\n"


def _data_name(run: Run) -> str:
    data = run.config.data
    return Path(data.path).name if data.path is not None else data.source


def _data_section(run: Run, data: dict[str, Any]) -> str:
    cfg = run.config.data
    lines = [f"- source: `{cfg.source}`" + (f" at `{Path(cfg.path).name}`" if cfg.path is not None else "")]
    if data:
        lines.append(f"- examples: {data.get('train')} train, {data.get('val')} validation, {data.get('test')} test "
                     f"(split by `data.split_seed` {cfg.split_seed})")
        if data.get("classes"):
            lines.append(f"- classes: {data['classes']} ({', '.join(run.model.spec.class_names[:20])})")
    prepared = _prepared_summary(run)
    if prepared:
        lines.append(f"- prepared by `genlab prepare`: {prepared}")
    lines += [f"- note: {note}" for note in data.get("notes", [])[:10]]
    return "\n".join(lines) + "\n"


def _prepared_summary(run: Run) -> str | None:
    from genlab.prepare.store import MANIFEST, summary

    folder = run.config.data.prepared
    return summary(Path(folder)) if folder is not None and (Path(folder) / MANIFEST).is_file() else None


def _training_section(run: Run, s: dict[str, Any]) -> str:
    train = run.config.train
    if not s:
        return "Not trained to the end yet (no train.json).\n"
    speed = f", {s['samples_per_s']:.0f} samples/s" if s.get("samples_per_s") else ""
    versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items())
    precision = s.get("trained_precision") or train.precision  # a CPU without bf16 kernels trains bf16 in 32-true
    return (f"- {s.get('steps')} steps of batch {train.batch_size} in {s.get('seconds')} s on {s.get('device')}"
            f"{speed} (stopped: {s.get('stopped_because')})\n"
            f"- optimizer {train.optimizer.name}, learning rate {train.optimizer.lr:g}, {train.schedule.name} "
            f"schedule, precision {precision}, EMA {'on' if train.ema.enabled else 'off'}, seed {train.seed}\n"
            f"- final losses: train {_num(s.get('train_loss'))}, validation {_num(s.get('val_loss'))}\n"
            f"- versions: {versions}\n\n"
            "The model's own settings:\n\n```yaml\n"
            f"{yaml.safe_dump(run.config.model.model_dump(mode='json'), sort_keys=False, default_flow_style=None)}"
            "```\n")


def _evaluation_section(run: Run, declared: Declared) -> str:
    if not run.paths.metrics.is_file():
        return f"Not evaluated yet: `genlab evaluate {run.path}` measures it and rewrites this card's figures.\n"
    m = run.metrics
    rows = ["| figure | value | beside |", "| --- | --- | --- |"]
    for figure in declared.headline:
        value, baseline = figure.value(m), figure.baseline(m)
        if isinstance(value, int | float):
            beside = f"{figure.beside[1]}: {_num(baseline)}" if baseline is not None else ""
            rows.append(f"| {figure.label} | {_num(value)} | {beside} |")
    how = ", ".join(f"{k} {v}" for k, v in (m.get("sampling") or {}).items())
    split = m.get("real_split", "test")
    setup = f"\nOn the {split} split, sampling with {how or 'the defaults'}, seed {m.get('seed')}."
    return "\n".join(rows) + setup + " Every figure is in metrics.json.\n"


def _audit_section(run: Run, declared: Declared) -> str:
    file = run.path / "audit.json"
    if not file.is_file():
        if not declared.audited:
            return f"No audit yet: genlab has no audit for {run.config.model.family} runs.\n"
        return f"Not audited yet: `genlab audit {run.path}` checks the outputs group by group.\n"
    audit = json.loads(file.read_text())
    flags = audit.get("flags", [])
    lines = [f"`genlab audit` on {audit.get('samples')} samples: {len(flags)} flag(s)."]
    lines += [f"- {f['class']}: {f['kind']} ({f['detail']}); what to do: {f['mitigation']}" for f in flags]
    return "\n".join(lines) + "\n"


def _limits(run: Run, data: dict[str, Any]) -> str:
    size = data.get("train")
    return (f"For research, teaching and prototyping. It learned from {size or 'a few'} examples of "
            f"{_data_name(run)}: it knows nothing outside them, may reproduce them closely, and carries whatever "
            "imbalance or bias they hold (see Responsible AI). Its outputs are not filtered unless it is served "
            "with output filters (`genlab serve` with `filters` in serve.yaml). The figures above are on the held-out "
            "split of the same data; they say nothing of other data.\n")


def _usage(run: Run) -> str:
    options = ", ".join(f"{k} {v}" for k, v in run.sampling.items()) or "none"
    return ("```bash\n"
            f"genlab sample {run.path} --n 8\n"
            f"genlab serve {run.path}   # OpenAI-compatible routes\n"
            "```\n\n"
            f"Both sample with the options the model folder keeps (the run's eval.sampling: {options}); a flag or a "
            "request's field overrides one.\n\n"
            f"The folder loads with `{run.model.hub_library}`'s own loaders where it is that library's format, and "
            "with `genlab.load(RUN)` always.\n" + ("\n" + example if (example := run.model.card_example(
                run.paths.model)) else ""))


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "n/a"
