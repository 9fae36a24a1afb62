"""Mode-collapse watch: at each validation, a fixed latent batch is scored in the evaluation's feature space.

Three figures go to TensorBoard: FID against the validation split (`val/fid`, which picks
best.ckpt for a GAN), the generated batch's mean pairwise feature distance as a fraction of real
images' (`monitor/diversity`), and the share of classes the evaluation's classifier finds in it
(`monitor/class_coverage`). A collapsed generator draws near-copies: diversity falls far below
real data's and classes go missing, and the log says so in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from genlab.data.records import Split
from genlab.evaluation.features import FeatureNet, feature_net
from genlab.evaluation.metrics import frechet_distance

log = logging.getLogger("genlab")

MIN_DIVERSITY = 0.5  # below half of real images' spread, the samples are near-copies of each other
MIN_COVERAGE = 0.5  # under half of the classes drawn


class CollapseWatch(L.Callback):
    """Score `n` fixed-seed samples against held-out reals at each validation (with EMA weights when on).
    The feature net is the evaluation's own (trained on the train split, cached in the run's eval/),
    made at the first validation."""

    def __init__(self, train: Split, held_out: Split, num_classes: int, n: int, feature_steps: int,
                 cache_dir: Path) -> None:
        self.train, self.num_classes, self.n = train, num_classes, n
        self.feature_steps, self.cache_dir = feature_steps, cache_dir
        self.real = held_out.x[:n] / 2 + 0.5
        self.net: FeatureNet | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.net is None:  # at the first validation, so a run that never validates never trains it
            with torch.inference_mode(False), torch.enable_grad():  # validation runs without autograd
                self.net, _ = feature_net(self.train, self.num_classes, self.feature_steps, self.cache_dir)
            with torch.no_grad():
                self.real_spread = _spread(self.net(self.real))
        # the generator itself, each class in turn: not the previews' options, whose truncation narrows variety
        fake = pl_module.sample(self.n, generator=torch.Generator(pl_module.device).manual_seed(1234),
                                **pl_module.example_conditions(self.n)).float().cpu()
        figures = collapse_figures(self.net, fake, self.real, self.real_spread, self.num_classes)
        pl_module.log_dict({"val/fid": figures["fid"], "monitor/diversity": figures["diversity"],
                            **({"monitor/class_coverage": figures["class_coverage"]} if self.num_classes > 1 else {})})
        if figures["collapsed"]:
            log.warning(f"step {trainer.global_step}: the generator looks collapsed: {figures['why']}")


@torch.no_grad()
def collapse_figures(net: FeatureNet, fake: torch.Tensor, real: torch.Tensor, real_spread: float,
                     num_classes: int) -> dict:
    """FID, diversity relative to real images, class coverage, and whether they say 'collapsed'."""
    diversity = _spread(net(fake)) / real_spread
    figures = {"fid": frechet_distance(net, real, fake), "diversity": diversity}
    reasons = []
    if diversity < MIN_DIVERSITY:
        reasons.append(f"samples spread {diversity:.2f} of real images' in feature space")
    if num_classes > 1:
        found = net.logits(fake).argmax(1).unique().numel()
        figures["class_coverage"] = found / num_classes
        if found / num_classes < MIN_COVERAGE:
            reasons.append(f"{found} of {num_classes} classes drawn")
    return {**figures, "collapsed": bool(reasons), "why": "; ".join(reasons)}


def _spread(features: torch.Tensor) -> float:
    return torch.pdist(features.float()).mean().item()
