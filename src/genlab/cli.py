"""The `genlab` command: parses arguments, calls the Python API, prints. Nothing else lives here."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="genlab: train, sample and evaluate generative models, each verb on a run directory.")
err = Console(stderr=True)
out = Console()

# Library chatter that says nothing to a genlab user (tips, defaults we set on purpose).
_QUIET = ("litlogger", "`weights_only` was not set", "exists and is not empty", "LeafSpec",
          "does not have many workers", "smaller than the logging interval", "will save all extracted features")


def _user_errors(fn):
    """Turn a user mistake into one red line and a non-zero exit; a bug keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from genlab.errors import GenlabError

        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except GenlabError as e:
            for line in str(e).splitlines():
                err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _quiet_libraries() -> None:
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(q in record.getMessage() for q in _QUIET)

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).addFilter(Drop())
    for q in _QUIET:
        warnings.filterwarnings("ignore", message=f".*{q}.*")


@app.command()
@_user_errors
def fit(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML (optional with --resume).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.max_steps=200.")] = [],  # noqa: B006
    resume: Annotated[Path | None, typer.Option(help="Continue this run from its last checkpoint.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
) -> None:
    """Train a model from a config into a run directory."""
    import genlab

    if config is None and resume is None:
        raise typer.BadParameter("give a CONFIG file, or --resume RUN_DIR", param_hint="CONFIG")
    if resume is not None and out_dir is not None:
        raise typer.BadParameter("--resume continues a run in place; drop --out", param_hint="--out")
    run = genlab.fit(config, overrides=set_, out=out_dir, resume=resume)
    if not run.paths.summary.exists() or os.environ.get("LOCAL_RANK", "0") != "0":
        return  # a DDP worker: rank zero reports
    s = run.summary
    out.print(f"trained {s['steps']} steps in {s['seconds']} s ({s['stopped_because']}); "
              f"{s['samples_per_s']:.0f} samples/s, {100 * s['mfu']:.0f}% of the matmul peak")
    out.print(f"run directory: {run.path}")
    out.print(f"model (diffusers/transformers format): {run.paths.model}")


@app.command()
@_user_errors
def sample(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `genlab fit`.")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many samples.")] = 64,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim | dpm-solver (default: eval.sampling).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampling steps (default: eval.sampling).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same samples.")] = 0,
    label: Annotated[list[str], typer.Option(help="Class to draw (repeat to cycle); class-conditional models.")] = [],  # noqa: B006
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Output file (default: RUN_DIR/samples/...).")] = None,
) -> None:
    """Draw samples from a trained run and write them to a file."""
    import genlab
    from genlab.config import sampling_options, with_given

    run = genlab.load(run_dir)
    options = sampling_options(run.config.model.family, with_given(run.config.eval.sampling, sampler=sampler,
                                                                   steps=steps, guidance_scale=guidance))
    if label:
        options["labels"] = [_int_or_str(label[i % len(label)]) for i in range(n)]
    path = genlab.sample_to_file(run, n, out_file, seed=seed, **options)
    out.print(f"wrote {n} samples to {path}")


@app.command()
@_user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `genlab fit`.")],
    n: Annotated[int | None, typer.Option("--n", min=2, help="Generated samples (default: eval.num_samples).")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm | ddim | dpm-solver.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampling steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
) -> None:
    """Score a run's samples against held-out data (FID, KID, class balance); writes metrics.json."""
    import genlab

    metrics = genlab.evaluate(run_dir, num_samples=n, sampler=sampler, steps=steps, guidance_scale=guidance)
    for key in ("fid", "kid_mean", "fid_real_baseline", "class_distribution_tv", "classifier_accuracy"):
        if key in metrics:
            out.print(f"{key}: {metrics[key]:.4g}")
    out.print(f"metrics: {Path(run_dir) / 'metrics.json'}")
    out.print(f"report: {Path(run_dir) / 'report.html'}")


@app.command()
@_user_errors
def info(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a run is: family, parameters, data, training done, metrics."""
    import genlab

    details = genlab.load(run_dir).info()
    if as_json:
        print(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        out.print(f"[bold]{key}[/bold]: {json.dumps(value) if isinstance(value, dict | list) else value}",
                  highlight=False, soft_wrap=True)


def _int_or_str(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def main() -> None:
    app(prog_name="genlab")


if __name__ == "__main__":
    sys.exit(main())
