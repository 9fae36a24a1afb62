"""The GAN family: every loss trains through the core, a step is one batch, EMA covers G alone,
resume is exact with two optimizers, the folder is the hub mixin's, and a short run beats an untrained G."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.evaluation.collapse import collapse_figures
from genlab.evaluation.features import feature_net
from genlab.models.diffaugment import diff_augment
from genlab.models.gan import GAN, Generator

from .conftest import GAN_TINY, Crash


class Record(L.Callback):
    """Counts training batches and keeps the last logged metrics."""

    def __init__(self) -> None:
        self.batches, self.metrics = 0, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> tuple[genlab.Run, Record]:
    record = Record()
    run = genlab.fit(None, overrides=GAN_TINY, out=tmp_path_factory.mktemp("gan") / "run", callbacks=[record])
    return run, record


def test_a_step_is_one_batch_and_the_monitors_are_logged(gan_run):
    run, record = gan_run
    assert record.batches == 30 and run.summary["steps"] == 30, "max_steps counts batches, not optimizer steps"
    for key in ("train/d_loss", "train/d_acc_real", "train/d_acc_fake", "train/grad_norm_generator",
                "train/grad_norm_discriminator", "val/fid", "monitor/diversity", "monitor/class_coverage"):
        assert key in record.metrics, key
    assert (run.path / "checkpoints/best.ckpt").is_file(), "val/fid picks the best checkpoint"
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    # Adam counts its own updates: with n_critic 1, G and D were each updated once per step
    assert [int(next(iter(s["state"].values()))["step"]) for s in ckpt["optimizer_states"]] == [30, 30]


def test_ema_averages_the_generator_alone_and_export_holds_it(gan_run):
    run, _ = gan_run
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert set(averaged) == set(raw)
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if k.startswith("generator."))
    assert all(torch.equal(averaged[k], raw[k]) for k in raw if k.startswith("discriminator."))
    exported = load_file(run.path / "model/model.safetensors")
    assert all(torch.equal(exported[k], averaged[f"generator.{k}"]) for k in exported)


def test_the_folder_is_the_hub_mixin_layout_and_a_seed_gives_the_same_images(gan_run):
    run, _ = gan_run
    assert {"config.json", "model.safetensors", "genlab.json"} <= {p.name for p in (run.path / "model").iterdir()}
    before = run.model.generator(torch.zeros(1, 16))
    hub = Generator.from_pretrained(run.path / "model")  # huggingface_hub's own loader, no genlab code
    assert torch.equal(hub(torch.zeros(1, 16)), before)
    a, b = genlab.load(run.path).sample(6, seed=3), genlab.load(run.path).sample(6, seed=3)
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, genlab.load(run.path).sample(6, seed=4))


def test_a_seed_gives_the_same_images_before_and_after_saving(gan_run, tmp_path):
    run, _ = gan_run
    config = run.model.config.model_copy(update={"class_conditional": True})
    spec = genlab.data.load_dataset(run.config.data.model_copy(update={"channels": 3})).spec
    model = GAN(config, spec).eval()  # colour, conditional, never saved
    before = model.sample(5, generator=torch.Generator().manual_seed(7), labels=[1, 2, 3, 4, "5"], truncation=2.0)
    model.save_pretrained(tmp_path / "m")
    after = GAN.from_pretrained(tmp_path / "m").sample(5, generator=torch.Generator().manual_seed(7),
                                                       labels=[1, 2, 3, 4, 5], truncation=2.0)
    assert before.shape == (5, 3, 8, 8) and torch.equal(before, after)


def test_truncation_draws_latents_within_the_cut(gan_run):
    run, _ = gan_run
    model = run.model
    seen = []
    model.generator.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.sample(500, generator=torch.Generator().manual_seed(0), truncation=0.5)
    z = seen[-1]
    assert z.abs().max() <= 0.5 + 1e-5 and z.std() > 0.2, "a truncated normal, not a clamp to the edges"
    model.sample(500, generator=torch.Generator().manual_seed(0))
    assert seen[-1].abs().max() > 2


def test_resume_is_exact_with_two_optimizers(tmp_path):
    over = [*GAN_TINY, "model.loss=r3gan", "model.diffaugment=[translation,color,cutout]"]
    whole = genlab.fit(None, overrides=over, out=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        genlab.fit(None, overrides=over, out=tmp_path / "broken", callbacks=[Crash(20)])
    resumed = genlab.fit(resume=tmp_path / "broken")
    a = torch.load(whole.paths.last_checkpoint, weights_only=True)
    b = torch.load(resumed.paths.last_checkpoint, weights_only=True)
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize("loss,logged", [("non-saturating", "train/d_acc_real"), ("wgan-gp", "train/gp"),
                                         ("r3gan", "train/r1")])
def test_every_loss_trains(tmp_path, loss, logged):
    record = Record()
    run = genlab.fit(None, overrides=[*GAN_TINY, f"model.loss={loss}", "model.n_critic=2", "train.max_steps=6",
                                      "train.val_every=6"], out=tmp_path / "r", callbacks=[record])
    assert logged in record.metrics and all(v == v for v in record.metrics.values())
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    steps = [int(next(iter(s["state"].values()))["step"]) for s in ckpt["optimizer_states"]]
    assert steps == [6, 12], "n_critic=2: two D updates per step, one G update"


def test_class_conditional_sampling_and_bad_labels(tmp_path):
    run = genlab.fit(None, overrides=[*GAN_TINY, "model.class_conditional=true", "train.max_steps=4",
                                      "train.val_every=4"], out=tmp_path / "c")
    assert run.sample(4, seed=0, labels=[0, 1, 2, 3]).shape == (4, 1, 8, 8)
    result = CliRunner().invoke(app, ["sample", str(run.path), "--n", "4", "--label", "11"])
    assert result.exit_code == 1 and "labels: 11 is not a class of this model" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["sample", str(run.path), "--n", "4", "--label", "3", "--truncation", "0.7",
                                      "--out", str(tmp_path / "grid.png")])
    assert result.exit_code == 0 and (tmp_path / "grid.png").is_file()
    result = CliRunner().invoke(app, ["sample", str(run.path), "--prompt", "hi"])
    assert result.exit_code == 2 and "--prompt: a gan run takes no such option" in result.output


def test_collapse_is_flagged_by_the_figures(tiny_run):
    dataset = genlab.data.load_dataset(tiny_run.config.data)
    net, _ = feature_net(dataset.train, 10, 50, tiny_run.paths.eval_cache)
    real = dataset.val.x[:64] / 2 + 0.5
    spread = torch.pdist(net(real).float()).mean().item()
    healthy = collapse_figures(net, dataset.train.x[:64] / 2 + 0.5, real, spread, 10)
    assert not healthy["collapsed"] and healthy["diversity"] > 0.7
    copies = collapse_figures(net, real[:1].repeat(64, 1, 1, 1), real, spread, 10)
    assert copies["collapsed"] and copies["class_coverage"] == 0.1 and "1 of 10 classes" in copies["why"]


def test_a_collapsed_generator_is_named_in_the_log(tmp_path, caplog):
    class Collapse(L.Callback):  # G's last layer zeroed: every latent gives the same image
        def on_train_batch_end(self, trainer, pl_module, *args):
            conv = pl_module.generator.body[-2]
            torch.nn.init.zeros_(conv.weight)

    with caplog.at_level(logging.WARNING, logger="genlab"):
        genlab.fit(None, overrides=[*GAN_TINY, "train.max_steps=10", "train.ema.enabled=false"],
                   out=tmp_path / "r", callbacks=[Collapse()])
    assert any("the generator looks collapsed" in r.message and "1 of 10 classes" in r.message
               for r in caplog.records)


def test_diffaugment_keeps_shape_and_passes_gradients():
    x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    torch.manual_seed(0)
    y = diff_augment(x, ["color", "translation", "cutout"])
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert (diff_augment(x, ["cutout"]) == 0).flatten(1).float().mean(1).min() > 0.1, "every image gets a hole"


def test_a_short_run_halves_the_untrained_generators_fid(tmp_path):
    over = [*GAN_TINY, "model.channels=[64,32]", "train.batch_size=32", "train.max_steps=200", "train.val_every=100",
            "train.optimizer.lr=0.0005", "train.ema.decay=0.99", "eval.num_samples=300", "eval.feature_steps=300"]
    run = genlab.fit(None, overrides=over, out=tmp_path / "q")
    trained = genlab.evaluate(run)["fid"]
    torch.manual_seed(0)
    run.__dict__["model"] = GAN(run.model.config, run.model.spec).eval()  # same architecture, untrained
    untrained = genlab.evaluate(run)["fid"]
    assert trained <= 0.5 * untrained, (trained, untrained)
