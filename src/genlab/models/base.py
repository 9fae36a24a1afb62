"""The one interface every family implements (`config/families.py` names them).

A family is a LightningModule that wires plain nn.Modules (or the diffusers / transformers model
itself) into training, and owns four things: `training_step`, `sample`, `save_pretrained` and
`from_pretrained`. The training core (optimizers, schedules, EMA, checkpoints) is shared. What a
family can do beyond that (draw images, continue text, upscale...) are its capabilities, listed on its
config class; each asks the family for the members it needs (`genlab/capabilities`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from diffusers.utils.torch_utils import randn_tensor
from pydantic import ValidationError
from safetensors.torch import load_model

from genlab.config import ModelConfig, TrainConfig
from genlab.config.families import META_FILE
from genlab.config.section import Sampling
from genlab.data.records import Dataset, DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import Media
from genlab.models.protocol import Graph, Suits
from genlab.training.lightning_internals import step_not_counted
from genlab.training.optim import build_optimizer, build_schedule, time_used

if TYPE_CHECKING:
    from genlab.responsible.memorization import CopyIndex


def _unimplemented(method: Any) -> Any:
    """A method every family writes itself: a capability that needs it does not count the base's."""
    method.unimplemented = True
    return method


class GenerativeModel(L.LightningModule):
    """Base of every family: one config object in, the shared optimizer set-up, the model-folder metadata."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig  # its capabilities are listed there (no torch to read them)
    Sampling: ClassVar[type[Sampling]] = Sampling  # keyword options of `sample`: configs, the CLI, the server
    media: ClassVar[Media]  # what `sample` returns (image tensors, texts, table rows...): every family names its own
    monitor: ClassVar[str] = "val/loss"  # the validation figure that picks checkpoints/best.ckpt (lower is better)
    optimizer_names: ClassVar[tuple[str, ...]] = ()  # names for each optimizer's logged gradient norm
    network: ClassVar[str | None] = None  # the attribute holding the hub-mixin network that the model folder stores
    hub_library: ClassVar[str] = "genlab"  # the library whose loaders read the model folder (its model card says)
    hub_task: ClassVar[str | None] = None  # the Hub's task, when not its first capability's (text to image)
    copies: CopyIndex | None = None  # text families: the training text's window hashes, kept in the model folder
    suits: ClassVar[Suits | None] = None  # what data `genlab advise` proposes the family for, and why
    takes_labels: bool = False  # `sample(labels=...)` draws the classes asked for (a class-conditional model)
    takes_prompts: bool = False  # `sample(prompt=..., negative_prompt=...)` draws what text asks for
    subject_prompt: str | None = None  # the prompt a fine-tune taught its one subject with (DreamBooth)
    preview_captions: list[str] | tuple[str, ...] = ()  # what a model drawn from text shows first: held-out captions
    collapse_samples: int = 0  # fixed latents scored for mode collapse at each validation (GANs); 0: none
    # the most of each costly sampling option a training preview draws with (diffusion steps, new tokens): previews
    # run at every validation, so a sampler set for the final evaluation (ddpm's thousand steps) must not slow training
    preview_limits: ClassVar[dict[str, int]] = {}
    spec: DataSpec
    sampling: dict[str, Any]  # the sampling options chosen for it (the run's eval.sampling, kept in its folder)

    def __init__(self, config: ModelConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__()
        self.config, self.spec, self.train_config = config, spec, train or TrainConfig()
        self.sampling = {}  # none chosen: the family's defaults

    # --- what each family writes -------------------------------------------------------------

    @classmethod
    def build(cls, config: ModelConfig, dataset: Dataset, train: TrainConfig | None = None
              ) -> tuple[GenerativeModel, Dataset]:
        """A new model for `dataset`, and the data as the model trains on it. Families that learn an
        encoding from the training split first (a tokenizer, column transforms) override this."""
        return cls(config, dataset.spec, train), dataset

    @_unimplemented
    def sample(self, n: int, *, generator: Any = None, **conditions: Any) -> Any:
        """`n` samples in the family's `media`. `generator` is one torch.Generator or a list of one per sample
        (a server seeds each image of a batch alone: `noise` honours both); the keyword arguments are the
        family's `Sampling` options and the conditions it takes (labels, a prompt...)."""
        raise NotImplementedError

    def noise(self, *shape: int, generator: Any = None) -> torch.Tensor:
        """Standard normal noise of `shape` on the model's device; with a list of generators, row i from the i-th."""
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def save_pretrained(self, path: str | Path) -> None:
        """The `network` in huggingface_hub's layout (config.json + model.safetensors), with genlab.json beside it;
        families stored in their ecosystem's own format (diffusers, transformers) override this pair."""
        if self.network is None:
            raise NotImplementedError(f"{type(self).__name__}: set `network` or override save_pretrained")
        getattr(self, self.network).save_pretrained(Path(path))
        self.write_meta(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GenerativeModel:
        if cls.network is None:
            raise NotImplementedError(f"{cls.__name__}: set `network` or override from_pretrained")
        config, spec = cls.read_meta(path)
        model = cls(config, spec)
        load_model(getattr(model, cls.network), Path(path) / "model.safetensors")
        return model.eval()

    @classmethod
    def load(cls, path: str | Path, fallback: dict[str, Any] | None = None) -> GenerativeModel:
        """`from_pretrained`, with the sampling options the run was evaluated with (kept in genlab.json; `fallback`,
        the run's eval.sampling, for a folder exported before folders kept them) as the model's own: `genlab
        sample`, `evaluate` and `serve` all start from them."""
        from genlab.config import chosen_sampling, format_errors

        model = cls.from_pretrained(path)
        kept = json.loads((Path(path) / META_FILE).read_text()).get("sampling", fallback or {})
        try:
            model.sampling = chosen_sampling(model.config.family, kept)  # typed, as a config's are
        except ValidationError as err:
            raise GenlabError(f"{Path(path) / META_FILE}: " + format_errors(err, {})) from None
        return model

    def sampling_steps(self, options: dict[str, Any]) -> int:
        """Network passes one sample costs with these options (what a server's `limits.max_steps` bounds);
        iterative samplers say how many."""
        return 1

    def shown(self, samples: Any, **conditions: Any) -> Any:
        """Samples as a person reads them (a continuation after its prompt); `sample` returns them bare."""
        return samples

    def check_request(self, n: int, labels: Any = None, **options: Any) -> None:
        """Refuse what this model cannot draw before any work starts (a server checks each request alone, so
        that one bad request never fails the batch it would join); a GenlabError names the field."""
        if labels is not None:
            self.label_ids(n, labels)

    def onnx_graphs(self) -> dict[str, Graph]:
        """The networks `genlab export --to onnx` writes, by name; a family without any returns none."""
        return {}

    def shard_layers(self) -> set[type[torch.nn.Module]]:
        """The layer classes `train.strategy: fsdp` makes one shard unit each (a transformer's decoder layer); none:
        the family is not sharded. A family that names some takes `state_dict=` (the gathered weights) in
        `save_pretrained`, since its own modules are wrapped by then."""
        return set()

    def preview(self, n: int, generator: Any = None) -> Any:
        """A quick look at the model during training, drawn as the run samples everywhere else."""
        return self.sample(n, generator=generator, **self.example_conditions(n), **self.preview_options())

    def preview_options(self) -> dict[str, Any]:
        """The run's sampling options (its eval.sampling), each costly one held to its preview limit."""
        options, chosen = dict(self.sampling), self.Sampling.model_validate(self.sampling)
        for key, most in self.preview_limits.items():
            value = getattr(chosen, key)
            if value is None:  # a sampler's own number of steps: ddpm's is every training timestep
                value = self.sampling_steps(chosen.model_dump())
            if value > most:
                options[key] = most
        return options

    # --- shared ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # FSDP has made each parameter a flat shard by the time optimizers are built; weight decay goes by the
        # number of dimensions each had before, kept here (the parameter objects themselves survive)
        self.unsharded_ndim = {id(p): p.ndim for p in self.parameters()}

    def configure_optimizers(self) -> dict:
        """One optimizer over all parameters; families with several (GANs) override this."""
        optimizer = build_optimizer(self, self.train_config.optimizer)
        schedule = build_schedule(optimizer, self.train_config.schedule, self.trainer.max_steps,
                                  self.train_config.val_every, time_used(self.trainer, self.train_config.schedule))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def ema_module(self) -> torch.nn.Module:
        """What the core's EMA averages (and export then saves): the whole model, or a GAN's generator."""
        return self

    def configure_each(self, *parts: tuple[torch.nn.Module, dict[str, Any]]) -> tuple[list, list]:
        """One optimizer and schedule per (module, changes to train.optimizer), for manually optimized families:
        changes given as None keep train.optimizer's value (a GAN's own g_lr, d_betas...)."""
        train = self.train_config
        if train.schedule.name == "plateau":
            raise GenlabError("train.schedule: plateau follows val/loss after automatic steps; this family steps its "
                              "optimizers itself: use constant, cosine or step")
        optimizers = [build_optimizer(module, train.optimizer.model_copy(
            update={k: v for k, v in changes.items() if v is not None})) for module, changes in parts]
        clock = time_used(self.trainer, train.schedule)
        schedules = [build_schedule(o, train.schedule, self.trainer.max_steps, train.val_every, clock)
                     for o in optimizers]
        return optimizers, schedules

    def step_optimizer(self, optimizer: Any, loss: torch.Tensor, *, counts_as_step: bool = True) -> None:
        """Backward and step: one update of a family that optimizes manually. The training core's
        `GradientWatch` clips to `train.grad_clip` and checks the gradients inside `step`.

        A training step is one batch, whatever number of optimizers it updates: the one update per
        batch that `counts_as_step` advances `trainer.global_step`, so `train.max_steps`, `val_every`
        and `checkpoint_every` all count batches (Lightning would count every optimizer's steps).
        """
        optimizer.zero_grad()
        self.manual_backward(loss)
        if counts_as_step:
            optimizer.step()
            return
        with step_not_counted(optimizer):
            optimizer.step()

    def step_schedules(self) -> None:
        """Advance the learning-rate schedules once per step, for families that optimize manually."""
        schedules = self.lr_schedulers()
        with warnings.catch_warnings():  # a D that waits out a warm-up (SR) still follows its schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for schedule in schedules if isinstance(schedules, list) else [schedules] if schedules else []:
                schedule.step()

    def card_example(self, folder: Path) -> str:
        """Markdown for the model card's "How to use": the folder in its ecosystem's own loader, with an example it
        may write beside the weights (a prompt's image); none by default."""
        return ""

    def write_meta(self, path: Path) -> None:
        meta = {"family": self.config.family, "config": self.config.model_dump(mode="json"),
                "spec": asdict(self.spec), "sampling": self.sampling, **self.extra_meta()}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        if self.copies is not None:
            self.copies.save(path)

    def extra_meta(self) -> dict[str, Any]:
        """What else a family keeps in genlab.json (read back in its from_pretrained)."""
        return {}

    def base_model(self) -> GenerativeModel | None:
        """The pretrained model this one was fine-tuned from, loaded again to be scored beside it (what the
        fine-tune gained and what it forgot); None for a model trained from scratch."""
        return None

    def started_from(self) -> str | None:
        """The folder, genlab run or hub id this model was fine-tuned from (None: trained from scratch)."""
        return None

    def example_conditions(self, n: int) -> dict[str, Any]:
        """What `n` example samples are drawn for: each class in turn for a class-conditional model (a model drawn
        from text: its example prompts); none for the others."""
        return {"labels": [i % self.spec.num_classes for i in range(n)]} if self.takes_labels else {}

    @classmethod
    def read_meta(cls, path: str | Path) -> tuple[ModelConfig, DataSpec]:
        """The family config and data spec stored beside the weights by `write_meta`."""
        file = Path(path) / META_FILE
        if not file.is_file():
            raise GenlabError(f"{path}: not a genlab model folder (no {META_FILE}); `genlab fit` writes one")
        meta = json.loads(file.read_text())
        spec = meta["spec"]
        spec = DataSpec(spec["modality"], tuple(spec["shape"]), tuple(spec["class_names"]), spec.get("sample_rate"),
                        spec.get("captioned", False))
        return cls.Config.model_validate(meta["config"]), spec

    def label_ids(self, n: int, labels: int | str | list | torch.Tensor) -> torch.Tensor:
        """Class labels given by index or name (one for all, or one per sample) -> (n,) class ids."""
        if isinstance(labels, int | str):
            labels = [labels] * n
        names = self.spec.class_names
        ids = []
        for label in labels.tolist() if isinstance(labels, torch.Tensor) else labels:
            if isinstance(label, str) and label in names:
                label = names.index(label)
            if not isinstance(label, int) or not 0 <= label < len(names):
                raise GenlabError(f"labels: {label!r} is not a class of this model: {', '.join(names)}")
            ids.append(label)
        if len(ids) != n:
            raise GenlabError(f"labels: got {len(ids)} labels for {n} samples")
        return torch.tensor(ids, device=self.device)

    def tokens_in(self, batch: dict) -> int:
        """Tokens a training batch holds, for tokens/s; 0 for families that do not train on tokens."""
        return 0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
