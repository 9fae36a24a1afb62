"""Image runs: FID, KID and precision / recall against held-out images, and class balance.

FID/KID come from torchmetrics with genlab's FeatureNet as the feature extractor. Two reference
points make the numbers readable: FID of held-out real images against the training images (the
floor a perfect generator would reach) and, in the tests, FID of an untrained model (the ceiling).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genlab.config import EvalConfig
from genlab.data import captioned_shapes as scenes
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.adherence import judge, prompt_figures
from genlab.evaluation.features import FeatureNet, feature_net, predict
from genlab.evaluation.fine_tune import fine_tune_figures, headline
from genlab.evaluation.report import IMAGE_METRICS, Scored, image_rows, image_samples
from genlab.responsible.memorization import ImageCopies
from genlab.run import Run


def evaluate_images(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    """Generate `ev.num_samples` images with the model's `options` and score them against the test split."""
    dataset = load_dataset(run.config.data, in_memory=True)
    held_out = dataset.held_out
    if len(held_out) < 2:
        raise GenlabError("evaluate: needs held-out images; set data.test_fraction > 0 when training")
    net, extractor = feature_net(dataset.train, dataset.spec.num_classes, ev.feature_steps, run.paths.eval_cache)

    model = run.model
    labels = _labels_like(dataset.train.y, ev.num_samples, ev.seed) if model.takes_labels else None
    # a model drawn from prompts is drawn from the held-out captions, so FID compares like with like
    rows_asked, captions = held_out.cycled(ev.num_samples)
    prompted = captions is not None and model.takes_prompts
    prompts = captions if prompted else None
    if model.subject_prompt:  # a DreamBooth subject's images have no captions: its prompt draws them
        prompts = [model.subject_prompt] * ev.num_samples
    started = time.perf_counter()
    fake = generate_images(model, ev, options, labels, prompts)
    sample_seconds = time.perf_counter() - started
    real_test, real_train = held_out.x / 2 + 0.5, dataset.train.x / 2 + 0.5

    metrics: dict[str, Any] = {
        "fid": frechet_distance(net, real_test, fake),
        "fid_real_baseline": frechet_distance(net, real_test, real_train),
        **kernel_distance(net, real_test, fake),
        **precision_recall(net, real_test, fake),
        **density_coverage(net, real_test, fake),
        "fid_interval": fid_interval(net, real_test, fake, seed=ev.seed),
    }
    copies = ImageCopies.calibrate(image_features(net, real_train), image_features(net, real_test), net=net)
    metrics.update(copies.figures(image_features(net, fake)))
    copies.save(run.paths.model)  # for a server's memorized filter
    if dataset.spec.num_classes > 1 and held_out.y is not None:
        k = dataset.spec.num_classes
        predicted = predict(net, fake)
        metrics["classifier_accuracy"] = (predict(net, real_test) == held_out.y).float().mean().item()
        metrics["class_distribution_tv"] = total_variation(predicted, held_out.y, k)
        metrics["generated_class_histogram"] = torch.bincount(predicted, minlength=k).tolist()
        metrics["inception_score"], metrics["inception_score_std"] = inception_score(net, fake)
        metrics["inception_score_real"], _ = inception_score(net, real_test)
        if labels is not None:
            metrics["conditional_accuracy"] = (predicted == labels).float().mean().item()
    if prompted and dataset.factor_names == scenes.FACTORS:  # a set the prompt-adherence judge reads
        figures = prompt_figures(judge(), fake, held_out.factors[rows_asked], real_test[rows_asked], ev.seed)
        metrics["adherence"] = figures
        for part in ("seen", "unseen"):
            if part in figures:
                metrics[f"adherence_{part}"] = figures[part]["attributes"]
                metrics[f"adherence_{part}_ceiling"] = figures[f"{part}_ceiling"]["attributes"]
                metrics[f"adherence_{part}_prompt_ignored"] = figures[f"{part}_prompt_ignored"]["attributes"]
                metrics[f"agreement_{part}"] = figures[part]["agreement"]
                metrics[f"agreement_{part}_ceiling"] = figures[f"{part}_ceiling"]["agreement"]
    if (base := model.base_model()) is not None:  # a fine-tune: its base scored beside it, drawn the same way

        def draw(which, asked: list[str] | None) -> torch.Tensor:
            return generate_images(which, ev, options, labels, asked)

        base_fake = draw(base, prompts)
        metrics["fid_base"] = frechet_distance(net, real_test, base_fake)
        metrics["fine_tune"] = fine_tune_figures(model, base, fake, base_fake, held_out, dataset.factor_names, ev,
                                                 draw)
        metrics.update(headline(metrics["fine_tune"]))
    metrics.update({
        "feature_extractor": extractor,
        "num_generated": len(fake),
        "num_real": len(real_test),
        "real_split": "test" if held_out is dataset.test else "val",
        "sampling": options,
        "seed": ev.seed,
        "seconds_per_sample": sample_seconds / len(fake),
    })
    rows = [(label, f"{metrics[k]:.4g}") for k, label in IMAGE_METRICS.items() if metrics.get(k) is not None]
    setup = [("feature extractor", extractor),
             ("samples", f"{len(fake)} generated, {len(real_test)} real ({metrics['real_split']})"),
             ("sampling", ", ".join(f"{k} {v}" for k, v in options.items()) + f", seed {ev.seed}")]
    return Scored(metrics, rows, setup, image_samples(fake, real_test) + nearest_gallery(net, copies, fake, real_train))


def nearest_gallery(net: FeatureNet, copies: ImageCopies, fake: torch.Tensor, train: torch.Tensor,
                    n: int = 8) -> str:
    """The `n` samples nearest a training image, each above its nearest training image: what a reviewer looks at
    to judge copying."""
    distances, index = copies.nearest(image_features(net, fake))
    closest = distances.argsort()[:n]
    caption = (f"the {len(closest)} samples nearest a training image (top) and that image (bottom); "
               f"nearer than {copies.radius:.3g} counts as a copy")
    return image_rows(torch.cat([fake[closest], train[index[closest]]]), len(closest), caption)


def generate_images(model, ev, options: dict[str, Any], labels: torch.Tensor | None,
                    prompts: list[str] | None = None) -> torch.Tensor:
    """`ev.num_samples` images in [0, 1], in batches of `ev.batch_size`, each batch seeded from `ev.seed`."""
    chunks = []
    for i, start in enumerate(range(0, ev.num_samples, ev.batch_size)):
        n = min(ev.batch_size, ev.num_samples - start)
        conditions = {} if labels is None else {"labels": labels[start : start + n]}
        if prompts is not None:
            conditions["prompt"] = prompts[start : start + n]
        generator = torch.Generator().manual_seed(ev.seed * 1000 + i)
        chunks.append(model.sample(n, generator=generator, **options, **conditions))
    return torch.cat(chunks).cpu()


def _labels_like(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Labels drawn with the training class frequencies, for class-conditional sampling."""
    return y[torch.randint(0, len(y), (n,), generator=torch.Generator().manual_seed(seed))]


def frechet_distance(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = FrechetInceptionDistance(feature=net, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def kernel_distance(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    subset = min(100, len(real), len(fake))
    kid = KernelInceptionDistance(feature=net, subset_size=subset, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng():  # KID averages over random subsets: fix them, so reruns agree
        torch.manual_seed(0)
        mean, std = kid.compute()
    return {"kid_mean": float(mean), "kid_std": float(std)}


def fid_interval(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0, draws: int = 50,
                 level: float = 0.9) -> list[float]:
    """A bootstrap interval for FID: both sets resampled with replacement `draws` times (features computed once).
    Resampling repeats points, which raises FID by about as much for every model, so the interval is the
    bootstrap spread around the estimate (its quantiles less their mean). Models scored on the same number of
    samples whose intervals overlap are not told apart by that many."""
    real_f, fake_f = image_features(net, real), image_features(net, fake)
    estimate = frechet_from_features(real_f, fake_f)
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([frechet_from_features(real_f[torch.randint(0, len(real_f), (len(real_f),), generator=g)],
                                                 fake_f[torch.randint(0, len(fake_f), (len(fake_f),), generator=g)])
                           for _ in range(draws)], dtype=torch.float64)
    low, high = values.quantile(torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)) - values.mean()
    return [max(0.0, estimate + float(low)), estimate + float(high)]


def frechet_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID from two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), as torchmetrics computes it."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # the trace of (S_a S_b)^1/2 is the sum of the square roots of the eigenvalues of S_a S_b
    roots = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * roots)


def precision_recall(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaenniemi et al., 2019) in the extractor's feature space: precision is
    the share of generated images inside the real images' manifold (each real feature's ball reaching its k-th
    nearest real neighbour), recall the share of real images inside the generated manifold. A sharp generator
    that drops modes keeps precision and loses recall; a blurry one the opposite."""
    if min(len(real), len(fake)) < 2:
        return {}  # a manifold of one point has no radius
    real_f, fake_f = image_features(net, real), image_features(net, fake)

    def covered(points: torch.Tensor, support: torch.Tensor) -> float:
        nearest = min(k, len(support) - 1) + 1  # +1: each point is its own nearest
        radii = torch.cdist(support, support).kthvalue(nearest, dim=1).values
        return (torch.cdist(points, support) <= radii).any(dim=1).double().mean().item()

    return {"precision": covered(fake_f, real_f), "recall": covered(real_f, fake_f)}


def density_coverage(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al., 2020) in the extractor's features: density counts how many real
    k-NN balls hold each sample (about 1 when samples are distributed as the real ones, above 1 when they crowd
    dense regions); coverage is the share of real balls holding at least one sample. Unlike recall, coverage
    is not inflated by a few outlying samples."""
    if len(real) <= k or not len(fake):
        return {}
    real_f, fake_f = image_features(net, real), image_features(net, fake)
    radii = torch.cdist(real_f, real_f).kthvalue(k + 1, dim=1).values  # +1: each point is its own nearest
    inside = torch.cdist(fake_f, real_f) <= radii  # (samples, real)
    return {"density": inside.sum().item() / (k * len(fake_f)), "coverage": inside.any(0).double().mean().item()}


@torch.no_grad()
def image_features(net: FeatureNet, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The extractor's features of images in [0, 1], in batches."""
    return torch.cat([net(images[i : i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def inception_score(net: FeatureNet, images: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp E[KL(p(y|x) || p(y))] with the domain classifier's p(y|x) (Salimans et al.), the mean and the spread
    over `splits` parts of the samples; at most the number of classes, reached by confident, balanced samples."""
    probs = torch.cat([net.logits(images[i : i + 500]).softmax(1).double() for i in range(0, len(images), 500)])
    scores = []
    for part in probs.chunk(min(splits, len(probs))):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp(min=1e-12).log() - marginal.clamp(min=1e-12).log())).sum(1).mean()
        scores.append(kl.exp().item())
    values = torch.tensor(scores, dtype=torch.float64)
    return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0


def total_variation(predicted: torch.Tensor, real: torch.Tensor, k: int) -> float:
    """Half the L1 distance between two class histograms: 0 is the same balance, 1 no overlap."""
    p = torch.bincount(predicted, minlength=k).float()
    q = torch.bincount(real, minlength=k).float()
    return 0.5 * (p / p.sum() - q / q.sum()).abs().sum().item()
