"""Audio runs, scored as DiffWave and WaveGAN score SC09: a digit classifier trained on the real training clips'
log-mels (genlab's FeatureNet, as for images) gives the feature space for FID, the Inception Score, and the
label accuracy of conditional samples ("draw a 7"). Embedding-based scores such as the Frechet Audio Distance
download their models at run time, so they are not used.

Two ceilings make the figures readable: the classifier's accuracy on held-out real clips, and on the same
clips after a round trip through the vocoder (mel, then Griffin-Lim): no sample can sound better than that.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from genlab.config import EvalConfig
from genlab.data.records import Split
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.features import feature_net, predict
from genlab.evaluation.metrics import (
    fid_interval,
    frechet_distance,
    generate_images,
    inception_score,
    kernel_distance,
    precision_recall,
)
from genlab.evaluation.report import Scored
from genlab.run import Run

AUDIO_METRICS = {
    "fid": "FID in the digit classifier's features (generated vs held-out; lower is better)",
    "fid_real_baseline": "FID of held-out real vs train real (the floor)",
    "fid_vocoded_real": "FID of held-out real vs the same clips through the vocoder (its share of the error)",
    "kid_mean": "KID",
    "precision": "precision: generated clips inside the real manifold",
    "recall": "recall: real clips inside the generated manifold",
    "label_accuracy": "label accuracy: generated clips classified as the requested digit",
    "classifier_accuracy": "classifier accuracy on held-out real clips (ceiling)",
    "classifier_accuracy_vocoded": "classifier accuracy on held-out real clips through the vocoder (ceiling)",
    "inception_score": "Inception Score of generated clips (classes: at most their number)",
    "inception_score_real": "Inception Score of held-out real clips",
    "vocoder_spectral_convergence": "vocoder round trip: spectral convergence on real clips (0 is exact)",
}


@torch.no_grad()
def mel_images(model: Any, waves: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Waveforms -> log-mel images in [0, 1], as the classifier reads them."""
    return torch.cat([model.mel.encode(waves[i : i + batch].to(model.device)).cpu() / 2 + 0.5
                      for i in range(0, len(waves), batch)])


@torch.no_grad()
def vocoded(model: Any, waves: torch.Tensor, iterations: int, batch: int = 250) -> torch.Tensor:
    """Real clips through the model's own front end and vocoder: the best a sample of this model can sound."""
    return torch.cat([model.mel.decode(model.mel.encode(waves[i : i + batch].to(model.device)), iterations).cpu()
                      for i in range(0, len(waves), batch)])


def evaluate_audio(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    """Generate `ev.num_samples` clips (every class equally when the model is conditional), score them against
    the test split."""
    dataset = load_dataset(run.config.data, in_memory=True)
    held_out = dataset.held_out
    if len(held_out) < 2:
        raise GenlabError("evaluate: needs held-out clips; set data.test_fraction > 0 when training")
    model, k = run.model, dataset.spec.num_classes
    train = Split(mel_images(model, dataset.train.x) * 2 - 1, dataset.train.y)
    net, extractor = feature_net(train, k, ev.feature_steps, run.paths.eval_cache)

    labels = torch.arange(ev.num_samples) % k if model.takes_labels else None
    started = time.perf_counter()
    fake_waves = generate_images(model, ev, options, labels)  # waveforms, batched and seeded as images are
    sample_seconds = time.perf_counter() - started
    iterations = options.get("griffin_lim_iters", model.Sampling().griffin_lim_iters)
    real_waves = held_out.x
    round_trip = vocoded(model, real_waves, iterations)
    fake, real, real_train = mel_images(model, fake_waves), mel_images(model, real_waves), train.x / 2 + 0.5
    real_vocoded = mel_images(model, round_trip)

    metrics: dict[str, Any] = {
        "fid": frechet_distance(net, real, fake),
        "fid_real_baseline": frechet_distance(net, real, real_train),
        "fid_vocoded_real": frechet_distance(net, real, real_vocoded),
        **kernel_distance(net, real, fake),
        **precision_recall(net, real, fake),
        "fid_interval": fid_interval(net, real, fake, seed=ev.seed),
        "vocoder_spectral_convergence": model.mel.spectral_convergence(real_waves.to(model.device),
                                                                       round_trip.to(model.device)),
    }
    if k > 1 and held_out.y is not None:
        metrics["classifier_accuracy"] = (predict(net, real) == held_out.y).float().mean().item()
        metrics["classifier_accuracy_vocoded"] = (predict(net, real_vocoded) == held_out.y).float().mean().item()
        metrics["inception_score"], metrics["inception_score_std"] = inception_score(net, fake)
        metrics["inception_score_real"], _ = inception_score(net, real)
        predicted = predict(net, fake)
        metrics["generated_class_histogram"] = torch.bincount(predicted, minlength=k).tolist()
        if labels is not None:
            metrics["label_accuracy"] = (predicted == labels).float().mean().item()
    metrics.update({"feature_extractor": f"{extractor}, on log-mel spectrograms", "num_generated": len(fake),
                    "num_real": len(real), "real_split": "test" if held_out is dataset.test else "val",
                    "sampling": options, "seed": ev.seed, "seconds_per_sample": sample_seconds / len(fake)})
    rows = [(label, f"{metrics[key]:.4g}") for key, label in AUDIO_METRICS.items() if metrics.get(key) is not None]
    setup = [("feature extractor", metrics["feature_extractor"]),
             ("samples", f"{len(fake)} generated, {len(real)} real ({metrics['real_split']})"),
             ("sampling", ", ".join(f"{key} {value}" for key, value in options.items()) + f", seed {ev.seed}")]
    media = model.media
    order = torch.argsort(labels[:10]) if labels is not None else torch.arange(min(10, len(fake_waves)))
    shown = (f"<h3>generated{' (zero to nine)' if labels is not None else ''}</h3>{media.html(fake_waves[order], 10)}"
             f"<h3>held-out real</h3>{media.html(real_waves[:10], 10)}"
             f"<h3>held-out real through the vocoder</h3>{media.html(round_trip[:10], 10)}")
    return Scored(metrics, rows, setup, shown)


def audit_clips(run: Run, n: int | None = None, *, target: str = "data", min_share: float | None = None
                ) -> dict[str, Any]:
    """`genlab audit` for audio: the audit by class, with the digit classifier reading log-mels of the clips."""
    from genlab.responsible.audit import audit_by_class

    return audit_by_class(run, n, target=target, min_share=min_share, as_images=mel_images,
                          samples_as_images=mel_images)
