"""The family protocol: a family written outside genlab, registered at run time, gets every layer (fit, sample,
its own verb, evaluate with its report, serving, ONNX export, the bake-off) with no genlab file edited; and no
layer above the families tells them apart by name."""

from __future__ import annotations

import ast
import base64
import csv
import io
import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.config import ModelConfig, Section
from genlab.config.families import BUILTIN, unregister_family
from genlab.config.section import Sampling
from genlab.config.verb import Done, Verb
from genlab.models import GenerativeModel, register_family
from genlab.models.protocol import Graph

SRC = Path(genlab.__file__).parent

# --- a family of one's own: every pixel an independent Gaussian, fitted by maximum likelihood -------------


class Pixels(nn.Module, PyTorchModelHubMixin):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.mean, self.log_std = nn.Parameter(torch.zeros(shape)), nn.Parameter(torch.zeros(shape))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise -> images in [0, 1]."""
        return (self.mean + noise * self.log_std.exp()).clamp(-1, 1) / 2 + 0.5

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of images in [-1, 1], nats per image."""
        z = (x - self.mean) / self.log_std.exp()
        return (0.5 * z**2 + self.log_std + 0.5 * np.log(2 * np.pi)).flatten(1).sum(1)


class ImagesIn(Section):
    source: Path = Field(description="An image file, or a folder of them.")
    out: Path = Field(description="The CSV to write: one row per image with its NLL.")


class PixelConfig(ModelConfig):
    family: Literal["pixel_gaussian"] = "pixel_gaussian"
    verbs: ClassVar[tuple[Verb, ...]] = (
        Verb("likelihood", "Each image's negative log-likelihood under the model.", ImagesIn,
             f"{__name__}:likelihood", inputs=("source",)),)


class PixelSampling(Sampling):
    temperature: float = Field(1.0, gt=0, le=10, description="Scale of every pixel's standard deviation.")


class PixelGaussian(GenerativeModel):
    Config, Sampling, network = PixelConfig, PixelSampling, "net"

    def __init__(self, config, spec, train=None) -> None:
        super().__init__(config, spec, train)
        self.net = Pixels(list(spec.shape))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.net.nll(batch["x"]).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.net.nll(batch["x"]).mean(), batch_size=len(batch["x"]))

    @torch.no_grad()
    def sample(self, n: int, *, generator=None, temperature: float = 1.0) -> torch.Tensor:
        return self.net(temperature * self.noise(n, *self.spec.shape, generator=generator))

    def onnx_graphs(self) -> dict[str, Graph]:
        return {"sampler": Graph(self.net, {"noise": torch.randn(2, *self.spec.shape)}, {"noise": {0: "batch"}},
                                 "images in [0, 1] (N, C, H, W) from standard normal noise")}


def likelihood(run: genlab.Run, source: Path, out: Path) -> Done:
    from genlab.images import read_image

    files = sorted(source.glob("*.png")) if source.is_dir() else [source]
    with out.open("w", newline="") as f, torch.no_grad():
        rows = csv.writer(f)
        rows.writerow(["file", "nll"])
        for file in files:
            x = read_image(file)[None] * 2 - 1
            rows.writerow([file.name, run.model.net.nll(x)[0].item()])
    return Done([f"wrote {len(files)} likelihoods to {out}"])


PIXELS = {"name": "pixels", "data": {"source": "digits", "image_size": 8},
          "model": {"family": "pixel_gaussian"},
          "train": {"max_steps": 150, "val_every": 150, "batch_size": 64, "optimizer": {"lr": 0.05},
                    "progress": "none", "grid_size": 4},
          "eval": {"num_samples": 100, "feature_steps": 40, "sampling": {"temperature": 0.9}}}


@pytest.fixture(scope="module")
def family():
    register_family(PixelGaussian)
    yield PixelGaussian
    unregister_family("pixel_gaussian")


@pytest.fixture(scope="module")
def pixel_run(family, tmp_path_factory) -> genlab.Run:
    return genlab.fit(PIXELS, out=tmp_path_factory.mktemp("own") / "pixels")


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_an_out_of_tree_family_trains_samples_and_runs_its_own_verb(pixel_run, tmp_path):
    untrained = PixelGaussian(PixelConfig(), pixel_run.model.spec)
    real = genlab.data.load_dataset(pixel_run.config.data).test.x
    assert pixel_run.model.net.nll(real).mean() < 0.5 * untrained.net.nll(real).mean(), "training fits the pixels"

    done = invoke("sample", pixel_run.path, "--n", 6, "--temperature", 0.5, "--out", tmp_path / "s.png")
    assert done.exit_code == 0, done.output
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == ((3 * 9 + 1) * 4, (2 * 9 + 1) * 4)
    wrong = invoke("sample", pixel_run.path, "--temprature", 0.5)
    assert wrong.exit_code == 2 and "did you mean --temperature?" in wrong.output
    bare = invoke("sample", pixel_run.path, "--temperature")
    assert bare.exit_code == 2 and "--temperature: needs a value" in bare.output
    too_hot = invoke("sample", pixel_run.path, "--temperature", 99)
    assert too_hot.exit_code == 2 and "sampling.temperature: input should be less than or equal to 10" in \
        " ".join(too_hot.output.split())

    folder = tmp_path / "in"
    folder.mkdir()
    digit = ((real[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(digit).save(folder / "digit.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "noise.png")
    done = invoke("likelihood", pixel_run.path, folder, "--out", tmp_path / "nll.csv")
    assert done.exit_code == 0 and "wrote 2 likelihoods" in done.output, done.output
    nll = {row["file"]: float(row["nll"]) for row in csv.DictReader(io.StringIO((tmp_path / "nll.csv").read_text()))}
    assert nll["digit.png"] < nll["noise.png"], "a held-out digit is likelier than noise"
    assert "likelihood" in invoke("--help").output, "the family's verb is a command"
    other = genlab.fit(None, overrides=["train.max_steps=1", "train.progress=none", "train.grid_size=0",
                                        "data.image_size=8", "model.block_out_channels=[8,8]",
                                        "model.attention=[false,false]", "model.norm_num_groups=4"], out=tmp_path / "d")
    refused = invoke("likelihood", other.path, folder, "--out", tmp_path / "x.csv")
    assert refused.exit_code == 1 and "a diffusion run; likelihood needs a pixel_gaussian run" in refused.output


def test_an_out_of_tree_family_is_evaluated_served_and_exported(pixel_run, tmp_path):
    from openai import OpenAI

    from genlab.serving import ServeConfig, serve_app
    from tests.test_serving import running

    done = invoke("evaluate", pixel_run.path, "--n", 100, "--temperature", 0.8)
    assert done.exit_code == 0, done.output
    assert "FID:" in done.output and "(real vs real:" in done.output
    metrics = json.loads((pixel_run.path / "metrics.json").read_text())
    assert metrics["fid"] > 0 and metrics["num_generated"] == 100 and metrics["sampling"] == {"temperature": 0.8}
    assert "<img" in pixel_run.paths.report.read_text()

    with running(serve_app([pixel_run.path], ServeConfig())) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        images = client.images.generate(model="pixels", prompt="", n=2, extra_body={"seed": 3, "temperature": 0.5})
        again = client.images.generate(model="pixels", prompt="", n=2, extra_body={"seed": 3, "temperature": 0.5})
        assert [d.b64_json for d in images.data] == [d.b64_json for d in again.data], "a seed fixes the images"
        with Image.open(io.BytesIO(base64.b64decode(images.data[0].b64_json))) as im:
            assert im.size == (8, 8)
        import openai

        with pytest.raises(openai.BadRequestError, match="truncation: a pixel_gaussian model does not take it"):
            client.images.generate(model="pixels", prompt="", extra_body={"truncation": 1.0})

    import onnxruntime as ort

    assert invoke("export", pixel_run.path, "--to", "onnx", "--out", tmp_path / "onnx").exit_code == 0
    noise = torch.randn(3, 1, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "onnx/sampler.onnx")).run(None, {"noise": noise.numpy()})[0]
    np.testing.assert_allclose(got, pixel_run.model.net(noise).detach().numpy(), atol=1e-5)


def test_an_out_of_tree_family_enters_a_bakeoff(family, tmp_path):
    colder = {**PIXELS, "name": "colder", "eval": {**PIXELS["eval"], "sampling": {"temperature": 0.3}}}
    for cfg in (PIXELS, colder):
        (tmp_path / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    done = invoke("bakeoff", tmp_path / "pixels.yaml", tmp_path / "colder.yaml", "--budget", 1.5,
                  "--out", tmp_path / "b")
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "b/bakeoff.json").read_text())
    assert sorted(result["ranking"]) == ["colder", "pixels"] and result["headline"][0]["key"] == "fid"
    assert (tmp_path / "b/bakeoff.html").read_text().count("<img") == 2


# --- no layer above the families tells them apart by name ---------------------------------------------------

FAMILY_FILES = {f"config/{name}.py" for name in BUILTIN}
# where a family's name, task or modality may be compared: the families' own files (the data layer holds a
# handler per modality instead: prepare/kinds.py)
ALLOWED = ("models/",)


NAMING = {SRC / "config/families.py", SRC / "config/__init__.py"}  # the registry, and the default family


def _layer_files() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if not str(p.relative_to(SRC)).startswith(ALLOWED)
            and str(p.relative_to(SRC)) not in FAMILY_FILES]


def _names(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _strings(node: ast.AST) -> bool:
    """A string literal, or a tuple, list or set of them."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(_strings(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _branches_on_a_name(node: ast.AST) -> bool:
    """`x.family == "gan"`, `task in ("upscale", "tabular")`, `"image" != modality`..."""
    if not isinstance(node, ast.Compare):
        return False
    sides = (node.left, *node.comparators)
    return any(_names(n) in ("family", "task", "modality") for n in sides) and any(_strings(n) for n in sides)


def test_no_layer_branches_on_a_family_task_or_modality_name():
    found = []
    for path in _layer_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if _branches_on_a_name(node):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and node.value in BUILTIN and path not in NAMING:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: names the family {node.value!r}")
    assert not found, "ask the family (models/base.py's protocol) instead:\n" + "\n".join(found)


def test_the_source_check_catches_what_it_forbids(tmp_path):
    code = ("if run.model.task == 'upscale': pass\nx = family != 'gan'\ny = modality in ('image', 'text')\n"
            "z = family in family_names()")
    caught = [n for n in ast.walk(ast.parse(code)) if _branches_on_a_name(n)]
    assert len(caught) == 3 and len(_layer_files()) > 40
