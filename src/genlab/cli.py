"""The `genlab` command: each command parses its arguments, calls the Python API and prints what it did
(`cli_verbs.py` builds the app and the capabilities' verbs; `cli_options.py` parses a family's options)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from genlab.cli_options import check_taken, family_options
from genlab.cli_verbs import EXTRA, GenlabApp, err, out, user_errors
from genlab.errors import GenlabError

app = GenlabApp(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
               help="genlab: train, sample and evaluate generative models, each verb on a run directory.")


@app.command()
@user_errors
def fit(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML (optional with --resume).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set train.max_steps=200.")] = [],  # noqa: B006
    resume: Annotated[Path | None, typer.Option(help="Continue this run from its last checkpoint.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
) -> None:
    """Train a model from a config into a run directory."""
    import genlab
    from genlab.config import load_config
    from genlab.run import RunPaths

    if config is None and resume is None:
        raise typer.BadParameter("give a CONFIG file, or --resume RUN_DIR", param_hint="CONFIG")
    if resume is not None and out_dir is not None:
        raise typer.BadParameter("--resume continues a run in place; drop --out", param_hint="--out")
    # the cheap checks first, so a mistake is answered before torch and Lightning load
    if resume is not None:
        RunPaths(resume).require("config")  # its checkpoint (last.ckpt, or a preemption's) is found by fit
    checked = load_config(config, set_) if config is not None else None
    run = genlab.fit(checked, overrides=set_ if checked is None else (), out=out_dir, resume=resume)
    if not run.trained or not run.paths.summary.exists() or os.environ.get("LOCAL_RANK", "0") != "0":
        return  # complete already (fit said so), or a DDP worker (rank zero reports)
    s = run.summary
    speed = (f"{s['samples_per_s']:.0f} samples/s, {100 * s['mfu']:.0f}% of the {s['matmul_peak']['dtype']} matmul peak"
             if s.get("samples_per_s") else f"throughput {s.get('throughput', 'not measured')}")
    if s.get("tokens_per_s"):
        speed = f"{s['tokens_per_s']:.0f} tokens/s, " + speed
    out.print(f"trained {s['steps']} steps in {s['seconds']} s in all ({s['stopped_because']}); {speed}")
    out.print(f"run directory: {run.path}")
    out.print(f"model folder: {run.paths.model}")


@app.command(context_settings=EXTRA)
@user_errors
def sample(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `genlab fit`.")],
    n: Annotated[int | None, typer.Option("--n", min=1, help="How many samples (default: 64 images, 1 text).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same samples.")] = 0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Output file (default: RUN_DIR/samples/, or the "
                                                                 "terminal for text).")] = None,
    label: Annotated[list[str], typer.Option(help="Class to draw (repeat to cycle), for class-conditional "
                                                  "models.")] = [],  # noqa: B006
) -> None:
    """Draw samples from a trained run with the options its model keeps (the run's eval.sampling), any of them
    changed by a flag (below), and conditions (--prompt, --source...)."""
    import genlab

    run = genlab.load(run_dir)
    options, conditions = family_options(run, ctx.args, conditions=True)
    media = run.model.media
    n = n or media.default_n
    if label:
        conditions["labels"] = [_int_or_str(label[i % len(label)]) for i in range(n)]
        check_taken(run, conditions)
    if media.to_terminal and out_file is None:
        texts = run.model.shown(run.sample(n, seed=seed, **conditions, **options), **conditions)
        for i, text in enumerate(texts):
            out.print(("" if i == 0 else "\n---\n") + text, highlight=False, markup=False)
        return
    path = genlab.sample_to_file(run, n, out_file, seed=seed, **conditions, **options)
    out.print(f"wrote {n} samples to {path}")


@app.command(context_settings=EXTRA)
@user_errors
def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `genlab fit`.")],
    n: Annotated[int | None, typer.Option("--n", min=2, help="Generated samples (default: eval.num_samples).")] = None,
) -> None:
    """Score a run against held-out data, print its family's headline figures; takes `sample`'s family options."""
    import genlab
    from genlab.capabilities import headline

    run = genlab.load(run_dir)
    options, _ = family_options(run, ctx.args)
    metrics = genlab.evaluate(run, num_samples=n, **options)
    for figure in headline(run.config.model.family):
        if (line := figure.line(metrics)) is not None:
            out.print(line, highlight=False)
    out.print(f"metrics: {Path(run_dir) / 'metrics.json'}")
    out.print(f"report: {Path(run_dir) / 'report.html'}")


@app.command()
@user_errors
def bakeoff(
    entries: Annotated[list[str], typer.Argument(help="Run configs or family names; the first one's data is used.")],
    budget: Annotated[float, typer.Option(help="Seconds of training for each entry.")] = 120.0,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the entries' runs and bakeoff.html.")] = Path(
        "runs/bakeoff"),
    set_: Annotated[list[str], typer.Option("--set", help="Override a key of every entry.")] = [],  # noqa: B006
) -> None:
    """Train several families on the same data for the same time, evaluate them alike, and rank them."""
    from genlab.study.bakeoff import bakeoff as run_bakeoff

    result = run_bakeoff(entries, budget=budget, out=out_dir, overrides=set_)
    figures = result["headline"]
    out.print(f"{'entry':<16} {'family':<12} {'steps':>6} " + " ".join(f"{f['label']:>10}" for f in figures))
    for e in result["entries"]:
        values = " ".join(f"{e['metrics'][f['key']]:>10.4g}" if e["metrics"].get(f["key"]) is not None else f"{'':>10}"
                          for f in figures)
        out.print(f"{e['name']:<16} {e['family']:<12} {e['steps']:>6} {values}", highlight=False)
    out.print(f"ranking: {' > '.join(result['ranking'])}; {result['verdict']}", highlight=False)
    out.print(f"report: {out_dir / 'bakeoff.html'}")


@app.command()
@user_errors
def advise(
    target: Annotated[str, typer.Argument(help="A run config, a built-in data set, or your file or folder of data.")],
    budget: Annotated[float, typer.Option(min=1, help="Seconds of training you can give each model.")] = 240.0,
    goal: Annotated[str, typer.Option(help="quality, speed (to train and sample) or control (an interpretable "
                                           "latent space).")] = "quality",
    out_dir: Annotated[Path, typer.Option("--out", help="Where the proposed configs go.")] = Path("advice"),
    run: Annotated[bool, typer.Option("--run", help="Run the bake-off of the proposals now.")] = False,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key of every proposed config.")]
    = [],  # noqa: B006
) -> None:
    """Read the data, propose the families that suit it (with why), and write a starting config for each."""
    from genlab.study.advice import advise as advice

    result = advice(target, goal=goal, budget=budget, out=out_dir, changes=set_)
    facts = ", ".join(f"{k} {v}" for k, v in result["facts"].items())
    out.print(f"data: {facts}; this machine: {result['matmul_gflops']:.0f} GFLOP/s (float32 matmul)", highlight=False)
    for i, p in enumerate(result["proposals"], 1):
        out.print(f"{i}. {p['family']}: {p['reason']} -> {p['config']}", highlight=False)
    if result["bakeoff"] is None:
        out.print(f"train it: genlab fit {result['proposals'][0]['config']}", highlight=False)
    elif run:
        from genlab.study.bakeoff import bakeoff as run_bakeoff

        configs = [p["config"] for p in result["proposals"]]
        ranked = run_bakeoff(configs, budget=budget, out=out_dir / "bakeoff")
        out.print(f"ranking: {' > '.join(ranked['ranking'])}; {ranked['verdict']}; report: "
                  f"{out_dir / 'bakeoff' / 'bakeoff.html'}", highlight=False)
    else:
        out.print(f"settle it on your data: {result['bakeoff']}  (or run again with --run)", highlight=False)


@app.command()
@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="A run config.")],
    gpu: Annotated[str, typer.Option(help="The device to plan for: cpu (this machine), l4, a100 or h100.")] = "cpu",
    devices: Annotated[int, typer.Option(min=1, help="Devices (DDP: each holds a replica and its own batch).")] = 1,
    set_: Annotated[list[str], typer.Option("--set", help="Override a config key.")] = [],  # noqa: B006
) -> None:
    """What a config will cost: parameters, memory per device, and time per step and for the run."""
    from genlab.study.plan import plan as make_plan

    p = make_plan(config, overrides=set_, gpu=gpu, devices=devices)
    out.print(f"{p['family']}: {p['parameters']:,} parameters ({p['trainable']:,} trained), batch "
              f"{p['batch_per_device']} per device, {p['devices']} {p['device']} device(s)", highlight=False)
    for part, size in p["memory"].items():
        out.print(f"  {part:<12} {size / 1e6:>10.1f} MB", highlight=False)
    room = "" if p["device_memory"] is None else f" in {p['device_memory'] / 1e9:.0f} GB"
    fits = "" if p["fits"] is None else (" (fits" if p["fits"] else " (does NOT fit") + f"{room})"
    out.print(f"  {'per device':<12} {p['memory_total'] / 1e6:>10.1f} MB{fits}", highlight=False)
    out.print(f"{p['flops_per_step'] / 1e9:.2f} GFLOP a step at {p['utilization']:.0%} of "
              f"{p['peak_flops'] / 1e12:.2f} TFLOP/s: {p['step_seconds']:.3f} s a step, "
              f"{p['run_seconds'] / 60:.1f} min for {p['max_steps']} steps", highlight=False)
    out.print(f"checked {p['checked']}", highlight=False)


@app.command()
@user_errors
def sweep(
    target: Annotated[Path, typer.Argument(help="A run config to search around, or (with --status) a sweep folder.")],
    space: Annotated[Path | None, typer.Option(help="YAML: config keys to {log_uniform|uniform|int|choice: ...}.")]
    = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials the study holds when done (finished or pruned).")] = 12,
    budget: Annotated[float | None, typer.Option(min=1, help="Seconds of training per trial (train.max_time).")]
    = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes on the one study (the cores are shared).")] = 1,
    objective: Annotated[str | None, typer.Option(help="A metrics.json figure to optimize (each trial is then "
                                                       "evaluated); default: the family's validation monitor.")]
    = None,
    direction: Annotated[str | None, typer.Option(help="minimize or maximize, for an objective that is not a "
                                                       "headline figure.")] = None,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none.")] = "median",
    seed: Annotated[int, typer.Option(help="The sampler's seed.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="The sweep folder: study.journal, trials/, sweep.html.")]
    = Path("runs/sweep"),
    show: Annotated[bool, typer.Option("--status", help="Print a sweep folder's best trials and importances.")]
    = False,
    work: Annotated[bool, typer.Option("--work", hidden=True)] = False,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key of the config: --set train.max_steps=60.")]
    = [],  # noqa: B006
) -> None:
    """Search hyperparameters with Optuna: every trial a run directory, pruned at validations, resumable."""
    from genlab.study import sweep as sweeps

    if work:
        sweeps.work(target, worker=int(os.environ.get("GENLAB_SWEEP_WORKER", "0")))
        return
    if show:
        result = sweeps.status(target)
        out_dir = target
    else:
        if space is None:
            raise GenlabError("--space: give the YAML file of the keys to search")
        result = sweeps.sweep(target, space=space, trials=trials, out=out_dir, budget=budget, jobs=jobs,
                              objective=objective, direction=direction, pruner=pruner, seed=seed, changes=set_)
        if not result:  # a rank that Lightning launched for a trial: rank zero reports
            return
    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items() if n)
    out.print(f"{result['objective']} ({result['direction']}): {counts}", highlight=False)
    for b in result["best"]:
        out.print(f"trial {b['number']:>3}  {b['value']:.4g}  {json.dumps(b['params'])}", highlight=False)
    if result["importances"]:
        out.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in result["importances"].items()),
                  highlight=False)
    out.print(f"report: {out_dir / 'sweep.html'}; optuna-dashboard {out_dir / 'study.journal'}")


@app.command("compare")
@user_errors
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the page.")] = Path("compare.html"),
    n: Annotated[int, typer.Option("--n", min=1, max=64, help="Samples drawn per run (seed 0).")] = 16,
) -> None:
    """Put runs side by side: config differences, shared figures with intervals, overlaid curves, samples."""
    from genlab.study.compare import compare

    result = compare(runs, out_file, n)
    names = result["runs"]
    width = max(12, *(len(n) for n in names))
    out.print(f"{'':<32} " + " ".join(f"{n:>{width}}" for n in names), highlight=False)
    for key, values in result["config_differences"].items():
        out.print(f"{key[:32]:<32} " + " ".join(f"{json.dumps(v)[:width]:>{width}}" for v in values), highlight=False)
    for f in result["figures"]:
        cells = " ".join(f"{v:>{width}.4g}" if v is not None else " " * width for v in f["values"])
        out.print(f"{f['label'][:32]:<32} {cells}", highlight=False)
    out.print(f"report: {out_file}")


@app.command()
@user_errors
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A run directory trained on labelled data.")],
    n: Annotated[int | None, typer.Option("--n", min=2, help="Samples to audit (default: eval.num_samples; tables: "
                                                            "as many as the training rows; text: answers per "
                                                            "prompt, 4).")] = None,
    target: Annotated[str | None, typer.Option(help="The group mix the outputs are held to: data (the held-out "
                                                    "mix, the default) or parity.")] = None,
    min_share: Annotated[float | None, typer.Option(min=0, max=1, help="A class under this share of the training "
                                                                       "data is flagged (default: half of parity).")]
    = None,
    fail_on: Annotated[str | None, typer.Option(help="Exit 3 when met: gap>X, p<X, flags[>N] or words of a flag's "
                                                     "kind, comma-separated (for CI).")] = None,
    group: Annotated[str | None, typer.Option(help="A table's categorical column to audit by (its groups' shares, "
                                                   "fidelity, and fairness of a model trained on synthetic rows); "
                                                   "for images, the --manifest column.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Images: a CSV of files (a `file` column) and attributes; "
                                                       "the run is audited by its --group column.")] = None,
    probes: Annotated[Path | None, typer.Option(help="Text runs: a YAML file of templates, axes (groups) and "
                                                     "sentence pairs in place of the built-in ones.")] = None,
) -> None:
    """Audit a run by its groups (classes, or a table's --group column): their shares of the data and of the samples,
    how well each is generated, and what to do about each flag."""
    from genlab.api import audit as audit_run
    from genlab.responsible.audit import gate

    if fail_on is not None:
        gate({"classes": [], "flags": [], "mix_test": {"valid": False}}, fail_on)  # a bad expression fails first
    result = audit_run(run_dir, n, target=target, min_share=min_share, group=group, probes=probes,
                       manifest=manifest)
    for line in result["summary"]:
        out.print(line, highlight=False)
    for flag in result["flags"]:
        out.print(f"flag: {flag['class']}: {flag['kind']} ({flag['detail']}); {flag['mitigation']}", highlight=False)
    out.print(f"{len(result['flags'])} flag(s); report: {Path(run_dir) / 'audit.html'}")
    met = gate(result, fail_on) if fail_on is not None else []
    for line in met:
        out.print(f"fail-on {line}", highlight=False)
    if met:
        raise typer.Exit(3)


@app.command("filter")
@user_errors
def filter_text(
    source: Annotated[Path, typer.Argument(help="A text file (findings are named by line and column), or a folder "
                                                "of images checked for copies of --model's training images.")],
    action: Annotated[str, typer.Option(help="flag (list what was found), redact ([EMAIL], [CARD]...) or "
                                             "refuse (exit 3 when anything is found).")] = "flag",
    kinds: Annotated[list[str], typer.Option("--kind", help="Kinds to look for (repeat; default all): email, "
                                                           "card, iban, ssn, ipv4, ipv6, phone, offensive, "
                                                           "memorized.")] = [],  # noqa: B006
    threshold: Annotated[float, typer.Option(min=0.05, max=1.0, help="offensive: the model's probability from which "
                                                                     "a sentence is offensive.")] = 0.8,
    model: Annotated[Path | None, typer.Option(help="memorized: the model (run or model folder) whose training "
                                                    "text (or images) copies are looked for.")] = None,
    min_chars: Annotated[int, typer.Option(min=50, help="memorized: the shortest copy reported.")] = 50,
    out_file: Annotated[Path | None, typer.Option("--out", help="Where redact writes the text (images: the folder "
                                                                "of those kept).")] = None,
) -> None:
    """Find personal data, offensive sentences and copied training text or images offline; flag, redact or refuse
    them."""
    from genlab.api import filter_images
    from genlab.api import filter_text as find_in_text

    if source.is_dir():
        copied, read = filter_images(source, model, action, out_file)
        for path in copied:
            out.print(f"{path}: memorized", highlight=False)
        out.print(f"{len(copied)} of {len(read)} image(s) in {source} copy a training image")
        if action == "redact":
            out.print(f"wrote the {len(read) - len(copied)} other image(s) to {out_file}")
        found = len(copied)
    else:
        text, findings, written = find_in_text(source, action, kinds, threshold, model, min_chars, out_file)
        for f in findings:
            line = text.count("\n", 0, f.start) + 1
            out.print(f"{source}:{line}:{f.start - text.rfind(chr(10), 0, f.start)}: {f.kind}", highlight=False)
        out.print(f"redacted {len(findings)} finding(s) into {written}" if written else
                  f"{len(findings)} finding(s) in {source}")
        found = len(findings)
    if action == "refuse" and found:
        raise typer.Exit(3)


@app.command()
@user_errors
def card(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `genlab fit`.")],
    license: Annotated[str, typer.Option(help="The license the card declares (a Hub license id).")] = "other",
) -> None:
    """Write the run's model card (model/README.md, Hugging Face format): data, training, metrics, audit, limits."""
    from genlab.api import card as write_card

    out.print(f"wrote {write_card(run_dir, license)}")


@app.command()
@user_errors
def rate(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories to compare.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the drawn samples and ratings.sqlite.")] = Path(
        "ratings"),
    n: Annotated[int, typer.Option("--n", min=2, help="Samples drawn per run (seeds 0..n-1).")] = 64,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the rating page.")] = 8800,
    admin_key: Annotated[str | None, typer.Option(envvar="GENLAB_RATING_ADMIN_KEY", help="Key that reads "
                                                  "/api/results (raters never see standings).")] = None,
    quota: Annotated[int, typer.Option(min=1, help="Pairs each rater may answer (votes and skips).")] = 200,
) -> None:
    """Serve a blind pairwise rating page over the runs' samples; votes go to OUT/ratings.sqlite."""
    import uvicorn

    from genlab.evaluation.rating import Ratings
    from genlab.serving.rating import rating_app

    if admin_key is not None and not admin_key.strip():  # refused before the samples are drawn, which takes time
        raise GenlabError("--admin-key: empty; give a key to read /api/results, or leave it out to keep the "
                          "results for `genlab ratings`")
    ratings = Ratings.create(runs, out_dir, n)
    out.print(f"rating {', '.join(ratings.runs)} at http://{host}:{port}/ ; results: genlab ratings {out_dir}")
    uvicorn.run(rating_app(ratings, admin_key=admin_key, quota=quota), host=host, port=port, log_level="warning",
                http="h11")  # a bounded request head, as genlab serve's


@app.command()
@user_errors
def ratings(
    folder: Annotated[Path, typer.Argument(help="A folder `genlab rate` wrote.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Win rates with 95% intervals and Bradley-Terry strengths from the votes so far."""
    from genlab.evaluation.rating import Ratings, summary_lines

    results = Ratings(folder).results()
    if as_json:
        out.print_json(data=results)
        return
    for line in summary_lines(results):
        out.print(line, highlight=False)


@app.command()
@user_errors
def info(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, or a folder genlab prepare wrote.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a run is: family, parameters, data, training done, metrics."""
    from genlab.run import describe

    details = describe(run_dir)
    if as_json:
        print(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        out.print(f"[bold]{key}[/bold]: {json.dumps(value) if isinstance(value, dict | list) else value}",
                  highlight=False, soft_wrap=True)


@app.command()
@user_errors
def prepare(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML: its data section is prepared "
                                                       "(optional: --set data.source=... alone).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the prepared set (default "
                                                                "prepared/<name>).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: --set data.image_size=32.")] = [],  # noqa: B006
    engine: Annotated[str | None, typer.Option("--engine", help="local (this process) or ray (Ray Data tasks over "
                                                                "blocks of the input; text). Default: data.engine.")
                      ] = None,
    address: Annotated[str | None, typer.Option("--address", help="With --engine ray: the cluster (auto, "
                                                                  "ray://HOST:10001); default a local one.")] = None,
) -> None:
    """Validate, clean, normalize, deduplicate and split a data set; write it with data_report.html."""
    from genlab.prepare import prepare as run_prepare

    extra = [f"data.engine={engine}"] * (engine is not None) + [f"data.address={address}"] * (address is not None)
    folder = run_prepare(config, out_dir, [*set_, *extra])
    summary = json.loads((folder / "prepared.json").read_text())
    for step in summary["steps"]:
        removed = ", ".join(f"{reason} {n}" for reason, n in step["reasons"].items())
        out.print(f"{step['step']:<12} kept {step['kept']:>7}  changed {step['changed']:>6}  removed "
                  f"{step['removed']:>6}{'  (' + removed + ')' if removed else ''}", highlight=False)
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    out.print(f"wrote {summary['items']} {summary['modality']} items ({splits}) and data_report.html to {folder}; "
              f"train on them with data.prepared: {folder}")


@app.command()
@user_errors
def serve(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or model folders to serve.")],
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="serve.yaml: batching, keys, limits, "
                                                                 "filters.")] = None,
) -> None:
    """Serve models over an OpenAI-compatible REST API (text, images, upscaling, tables)."""
    # before torch loads OpenMP: its threads sleep when they wait, since the text engine's process and the image
    # workers share the cores and a spinning pool starves the others (measured: 1.3x the requests, mixed load)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from genlab.serving import load_serve_config
    from genlab.serving.listen import serve_until_stopped

    cfg = load_serve_config(config, host=host, port=port)

    def announce(names: list[str]) -> None:
        _json_log_lines()
        ops = f"; /health, /ready and /metrics also on port {cfg.ops_port}" if cfg.ops_port is not None else ""
        err.print(f"serving {', '.join(names)} on http://{cfg.host}:{cfg.port} (docs at /docs{ops})", highlight=False)

    serve_until_stopped(runs, cfg, announce)


def _json_log_lines() -> None:
    """The server's one JSON line per request, to stderr, unadorned."""
    log = logging.getLogger("genlab.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.INFO)


@app.command("export")
@user_errors
def export_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (or model folder).")],
    to: Annotated[str, typer.Option("--to", help="docker (a build context with Kubernetes manifests) or onnx.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write.")],
) -> None:
    """Export a run for deployment: a container build context, or ONNX graphs."""
    from genlab.export import export_docker, export_onnx
    from genlab.serving.folders import load_model

    if to == "docker":
        out.print(f"wrote a build context to {export_docker(run_dir, out_dir)} (docker build -t NAME {out_dir})")
    elif to == "onnx":
        written = export_onnx(load_model(run_dir)[0], out_dir)
        if (run_dir / "config.yaml").is_file():  # a run directory: its model card goes with the graphs
            import shutil

            from genlab.api import card as write_card

            written.append(Path(shutil.copy(write_card(run_dir), out_dir / "README.md")))
        out.print(f"wrote {', '.join(p.name for p in written)} to {out_dir}")
    else:
        raise GenlabError(f"--to: {to!r} is not one of docker, onnx")


def _int_or_str(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


app.sample_command = sample
app.complete = True


def main() -> None:
    app(prog_name="genlab")


if __name__ == "__main__":
    sys.exit(main())
