"""The run config: one YAML file with sections data, model, train and eval, validated by pydantic.

Every field has a default that runs on a laptop CPU. Family-specific model fields live in the
family's own `Config` class (see `genlab.models`); this file holds what every family shares.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from genlab.config.prepare import Step
from genlab.config.section import Section
from genlab.errors import ConfigError


class DataConfig(Section):
    source: str = "digits"  # a built-in data set or a user format (image_folder, text, ...)
    path: Path | None = None  # the user's file or folder, for user formats
    text_field: str = "text"  # JSONL: the field that holds each document's text
    source_field: str = "source"  # JSONL pairs (seq2seq): the input text
    target_field: str = "target"  # JSONL pairs (seq2seq): the text to produce
    target: str | None = None  # tables: the label column (kept as a column; stratifies the split)
    normal_class: str | None = None  # tables: train on rows of this target class; the rest are test anomalies
    limit: int | None = Field(None, ge=1)  # use only the first N documents
    image_size: int | None = Field(16, ge=4, le=1024)  # images are resized to this square side
    channels: Literal[1, 3] | None = None  # None: as the data comes (grey digits -> 1)
    sample_rate: int = Field(16_000, ge=1_000, le=192_000)  # audio is resampled to this rate
    clip_seconds: float = Field(1.0, gt=0, le=30)  # audio clips are cut or padded to this length
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    split_seed: int = 0  # the split depends on this alone, so runs with other train seeds compare
    pipeline: list[Step] | None = None  # genlab prepare's steps; None: the modality's default pipeline
    prepared: Path | None = None  # a folder `genlab prepare` wrote: fit trains on it as it is
    engine: Literal["local", "ray"] = "local"  # where genlab prepare runs its per-block work
    address: str | None = None  # engine ray: the cluster (auto, ray://host:10001); None: RAY_ADDRESS or a local one
    blocks: int | None = Field(None, ge=1, le=100_000)  # blocks the input is cut in; None: twice the CPUs
    # text: train from the prepared set's shards, tokenized once into chunks on disk, instead of from memory;
    # auto streams a training split over stream_above_mb (true needs a prepared set: data.prepared or user files)
    streaming: bool | Literal["auto"] = "auto"
    stream_above_mb: float = Field(256, ge=0)
    chunks_url: str | None = None  # streaming: keep the token chunks in s3://BUCKET/PREFIX; None: the local cache
    # training batches draw each group equally often: "label" (classes) or a table's column (a group attribute)
    balance_by: str | None = None

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from genlab.data.registry import source_names

        return _one_of(value, source_names())

    @field_validator("chunks_url")
    @classmethod
    def _a_bucket(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[^/]+(/.*)?", value):
            raise ValueError(f"{value!r}: give s3://BUCKET/PREFIX (a folder on disk is the cache: GENLAB_CACHE)")
        return value

    @field_validator("pipeline")
    @classmethod
    def _copies_after_dedup(cls, value: list | None) -> list | None:
        names = [s.step for s in value or []]
        if "swap_groups" in names and "deduplicate" in names and names.index("swap_groups") < names.index(
                "deduplicate"):
            raise ValueError("swap_groups runs after deduplicate, which would take its copies for near duplicates")
        return value


class ModelConfig(Section):
    """Fields every family shares; each family subclasses it with its own."""

    family: str = "diffusion"
    # what the family can do, most important first (genlab/capabilities: images, text, upscale, rows...)
    capabilities: ClassVar[tuple[str, ...]] = ()

    def data_problem(self, data: DataConfig) -> str | None:
        """Why this family cannot learn from `data.source` read this way, or None (the default takes any)."""
        return None


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd", "muon"] = "adamw"  # muon: hidden weight matrices; AdamW for the rest
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # applied to weight matrices only, not biases or norms
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0)  # sgd only
    nesterov: bool = False  # sgd only
    fused: bool | None = None  # None lets torch choose


class ScheduleConfig(Section):
    name: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine floor, as a fraction of the peak lr
    step_size: int = Field(1000, ge=1)  # step: multiply by gamma every step_size steps
    gamma: float = Field(0.5, gt=0, le=1)  # step and plateau factor
    patience: int = Field(3, ge=0)  # plateau: validations without improvement
    monitor: str = "val/loss"  # plateau
    follow_time: bool = True  # with train.max_time: as far along as the larger of steps and time gone


class EMAConfig(Section):
    enabled: bool = True
    decay: float = Field(0.999, gt=0, lt=1)
    warmup: bool = True  # decay ramps up as (1+n)/(10+n), so short runs are not dominated by init


class FSDPConfig(Section):
    """How `train.strategy: fsdp` shards: torch's sharding strategies, activation checkpointing per layer, offload."""

    sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    activation_checkpointing: bool = False  # recompute each layer's activations in the backward: memory for time
    cpu_offload: bool = False


class EarlyStoppingConfig(Section):
    enabled: bool = False
    monitor: str = "val/loss"
    patience: int = Field(5, ge=1)  # in validations
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["min", "max"] = "min"


class TrainConfig(Section):
    max_steps: int = Field(2000, ge=1)
    max_time: float | None = Field(None, gt=0)  # wall-clock budget in seconds; the lr schedule ends with it
    batch_size: int = Field(128, ge=1)
    seed: int = 0
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EMAConfig = EMAConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    grad_clip: float | None = Field(1.0, gt=0)  # max global grad norm; None disables
    accumulate_grad_batches: int = Field(1, ge=1)
    val_every: int = Field(250, ge=1)  # steps between validations (and sample grids)
    val_batches: int | None = Field(None, ge=1)  # validate on the first N batches of the val split; None: all
    checkpoint_every: int = Field(250, ge=1)  # steps between checkpoints/last.ckpt writes
    log_every: int = Field(25, ge=1)
    grid_size: int = Field(16, ge=0)  # samples previewed at each validation (image grid, text); 0 disables
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    wandb_project: str = "genlab"
    mlflow_experiment: str = "genlab"
    mlflow_tracking_uri: str | None = None  # None: sqlite:///<the runs' folder>/mlflow.db
    accelerator: str = "auto"  # auto picks a GPU when there is one, else the CPU
    devices: int | str = 1
    strategy: str = "auto"  # ddp, fsdp, ... through Lightning
    fsdp: FSDPConfig = FSDPConfig()  # with strategy fsdp: how the text families shard
    num_nodes: int = Field(1, ge=1)
    progress: Literal["auto", "rich", "log", "none"] = "auto"  # auto: rich on a terminal, log lines otherwise


class EvalConfig(Section):
    num_samples: int = Field(500, ge=2)
    sampling: dict[str, Any] = {}  # the family's sampling options (its `Sampling` class), e.g. {sampler: ddim}
    batch_size: int = Field(250, ge=1)
    seed: int = 0
    feature_steps: int = Field(600, ge=1)  # training steps of the feature classifier
    likelihood_samples: int = Field(64, ge=1)  # importance samples of a VAE's likelihood bound (IWAE)
    latent_images: int = Field(2000, ge=2)  # held-out images a VAE's latent figures (ELBO, MIG) are computed on


class RunConfig(Section):
    name: str = "run"
    data: DataConfig = DataConfig()
    model: SerializeAsAny[ModelConfig] = Field(default_factory=lambda: _family_config({}))
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _validate_for_family(cls, value: Any) -> ModelConfig:
        return value if isinstance(value, ModelConfig) else _family_config(value)

    @model_validator(mode="after")
    def _sampling_for_family(self) -> RunConfig:
        check_sampling(self.model.family, self.eval.sampling, loc=("eval", "sampling"))
        if (problem := self.model.data_problem(self.data)) is not None:
            detail = InitErrorDetails(type=PydanticCustomError("unsuited", problem), loc=("data", "source"),
                                      input=self.data.source)
            raise ValidationError.from_exception_data("RunConfig", [detail])
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _family_config(value: Any) -> ModelConfig:
    from genlab.config.families import family_config, family_names

    if not isinstance(value, dict):
        return ModelConfig.model_validate(value)  # lets pydantic name the type error
    family = value.get("family", ModelConfig().family)
    if family not in family_names():
        detail = InitErrorDetails(
            type=PydanticCustomError("unknown_name", _not_one_of(family, family_names())), loc=("family",),
            input=family,
        )
        raise ValidationError.from_exception_data("ModelConfig", [detail])
    return family_config(family).model_validate(value)


def check_sampling(family: str, options: dict[str, Any], loc: tuple = ()) -> dict[str, Any]:
    """The family's sampling options with defaults filled in; a ValidationError locates a bad key under `loc`."""
    from genlab.config.families import family_sampling

    try:
        return family_sampling(family).model_validate(options).model_dump()
    except ValidationError as err:
        details = [InitErrorDetails(type=e["type"], loc=(*loc, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                   for e in err.errors()]
        raise ValidationError.from_exception_data("RunConfig", details) from None


def chosen_sampling(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options chosen, typed by the family's `Sampling`, without the defaults of those not chosen: what a model
    folder keeps, so that a default that depends on another option (the steps of a sampler) follows it later."""
    from genlab.config.families import family_sampling

    full = family_sampling(family).model_validate(options).model_dump(mode="json")  # JSON: a model folder keeps it
    return {key: full[key] for key in options}


def sampling_options(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """`check_sampling` for options given at call time (CLI flags, API keywords): ConfigError on a bad one."""
    try:
        return check_sampling(family, options, loc=("sampling",))
    except ValidationError as err:
        raise ConfigError(format_errors(err, {"model": {"family": family}})) from None


def with_given(base: dict[str, Any], **given: Any) -> dict[str, Any]:
    """`base` updated with the options a caller actually gave (None means not given)."""
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def _one_of(value: str, allowed: Any) -> str:
    if value not in allowed:
        raise PydanticCustomError("unknown_name", _not_one_of(value, allowed))
    return value


def _not_one_of(value: Any, allowed: Any) -> str:
    return f"{value!r} is not one of: {', '.join(sorted(allowed))}"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of nested dicts (lists are leaves): a config as its override keys."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def load_config(source: str | Path | dict | RunConfig | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a YAML file (or dict), apply `key.path=value` overrides, validate; ConfigError on any problem."""
    if isinstance(source, RunConfig):
        raw = source.model_dump(mode="json")
    elif isinstance(source, dict):
        raw = dict(source)
    elif source is None:
        raw = {}
    else:
        raw = _read_yaml(Path(source))
        raw.setdefault("name", Path(source).stem)
    for item in overrides:
        _apply_override(raw, item)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, raw)) from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping with sections data, model, train, eval")
    return raw


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.max_steps=200")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # a plain string that YAML would misread
    node = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def format_errors(err: ValidationError, raw: dict) -> str:
    """One line per problem: the key path, then what is wrong and what is allowed."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(e["loc"][:-1], raw)
            hint = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"{path}: unknown key{suggestion} (allowed: {', '.join(allowed)})")
        elif e["type"] in ("unknown_name", "unsuited"):
            lines.append(f"{path}: {e['msg']}")
        else:
            lines.append(f"{path}: {e['msg'][0].lower()}{e['msg'][1:]} (got {e.get('input')!r})")
    return "\n".join(lines)


def _fields_at(loc: tuple, raw: dict) -> list[str]:
    from genlab.config.families import family_config, family_names, family_sampling

    family = (raw.get("model") or {}).get("family", ModelConfig().family)
    known = family in family_names()
    if loc and loc[-1] == "sampling":
        return list(family_sampling(family).model_fields) if known else []
    model: Any = RunConfig
    for part in loc:
        if model is RunConfig and part == "model":
            model = family_config(family) if known else ModelConfig
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field else None
    return list(getattr(model, "model_fields", {}))
