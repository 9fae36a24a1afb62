"""The family and capability protocols: a family written outside genlab, registered at run time, gets every layer
(fit, sample, evaluate with its report, serving, ONNX export, the bake-off) with no genlab file edited; a capability
written outside genlab brings its verb, API function and route the same way; and no layer above the families
tells them apart by name, reads their fields, or imports upward."""

from __future__ import annotations

import ast
import base64
import io
import json
import re
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np
import pytest
import torch
import yaml
from fastapi import APIRouter, Depends, Request
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

import genlab
from genlab import Capability, Done, Verb, register_capability, register_family
from genlab.capabilities import BUILTIN as BUILTIN_CAPABILITIES
from genlab.capabilities import capability, check_has, unregister_capability
from genlab.capabilities.images import png_b64
from genlab.capabilities.upscale import decode_image
from genlab.cli import app
from genlab.config import ModelConfig, Section
from genlab.config.families import BUILTIN, family_class, family_config, unregister_family
from genlab.config.section import Sampling
from genlab.media.formats import IMAGES
from genlab.models import GenerativeModel
from genlab.models.protocol import Graph
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import authorize, run_job, served_for

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


class PixelConfig(ModelConfig):
    family: Literal["pixel_gaussian"] = "pixel_gaussian"
    capabilities: ClassVar[tuple[str, ...]] = ("images",)


class PixelSampling(Sampling):
    temperature: float = Field(1.0, gt=0, le=10, description="Scale of every pixel's standard deviation.")


class PixelGaussian(GenerativeModel):
    Config, Sampling, media, network = PixelConfig, PixelSampling, IMAGES, "net"

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


def test_an_out_of_tree_family_trains_and_samples_with_its_own_options(pixel_run, tmp_path):
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

    assert pixel_run.sample(2, seed=1).equal(pixel_run.sample(2, seed=1, temperature=0.9)), \
        "a run samples with the options it was evaluated with (eval.sampling), kept in its model folder"


def test_an_out_of_tree_family_is_evaluated_served_and_exported(pixel_run, tmp_path):
    from openai import OpenAI

    from genlab.serving import ServeConfig, serve_app
    from tests.conftest import running

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


# --- a capability of one's own: colorize grey images, with a verb, an API function and a route ---------------


class Colorizer(Protocol):
    def colorize(self, grey: torch.Tensor) -> torch.Tensor: ...  # (N, 1, H, W) in [0, 1] -> (N, 3, H, W)


class GreyIn(Section):
    source: Path = Field(description="A grey image.")
    out: Path = Field(description="The colour PNG to write.")


def colorize_file(run: genlab.Run | Path, source: Path, out: Path) -> Path:
    """The API function: a grey image file in, its colour version out."""
    from genlab.media.images import read_image, write_image

    run = run if isinstance(run, genlab.Run) else genlab.load(run)
    check_has(run.config.model.family, "colorize", run.path)
    grey = read_image(source).mean(0, keepdim=True)
    return write_image(run.model.colorize(grey[None])[0], out)


def colorize_command(run: genlab.Run, source: Path, out: Path) -> Done:
    return Done([f"wrote {colorize_file(run, source, out)}"])


class ColorizeRequest(ModelRequest):
    image: str  # base64 PNG


class ServedColorizer(Served):
    kind = "colorize"

    def run_batch(self, key, items: list[torch.Tensor]) -> list[str]:
        return [png_b64(self.model.colorize(grey[None])[0]) for grey in items]


router = APIRouter()


@router.post("/v1/images/colorize")
async def colorize_route(body: ColorizeRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    server, served = served_for(request, body.model, ServedColorizer, "/v1/images/colorize")
    grey = decode_image(body.image, 1, "image", server.config.limits.max_image_side)
    return {"data": [{"b64_json": b} for b in await run_job(served, object(), [grey], request)]}


ServedColorizer.router = router
COLORIZE = Capability("colorize", Colorizer, served=ServedColorizer, verbs=(
    Verb("colorize", "A grey image in colour.", GreyIn, colorize_command, inputs=("source",)),))


class TintNet(nn.Module, PyTorchModelHubMixin):
    def __init__(self) -> None:
        super().__init__()
        self.colour = nn.Parameter(torch.full((3,), 0.5))


class TintConfig(ModelConfig):
    family: Literal["tint"] = "tint"
    capabilities: ClassVar[tuple[str, ...]] = ("colorize",)


class Tint(GenerativeModel):
    """Learns the colour of the training images' ink: a grey image becomes that colour, as bright as it was."""

    Config, media, network = TintConfig, IMAGES, "net"

    def __init__(self, config, spec, train=None) -> None:
        super().__init__(config, spec, train)
        self.net = TintNet()

    def loss(self, batch: dict) -> torch.Tensor:
        rgb = batch["x"] / 2 + 0.5
        return (self.colorize(rgb.mean(1, keepdim=True)) - rgb).square().mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch), batch_size=len(batch["x"]))

    def colorize(self, grey: torch.Tensor) -> torch.Tensor:
        return (grey * self.net.colour[None, :, None, None] * 2).clamp(0, 1)

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        return self.colorize(torch.rand(n, 1, *self.spec.shape[1:], generator=generator))


@pytest.fixture(scope="module")
def tint_run(tmp_path_factory):
    register_capability(COLORIZE)
    register_family(Tint)
    config = {"name": "tint", "data": {"source": "digits", "image_size": 8, "channels": 3},
              "model": {"family": "tint"}, "train": {"max_steps": 20, "val_every": 20, "batch_size": 64,
                                                    "progress": "none", "grid_size": 0, "ema": {"enabled": False},
                                                    "optimizer": {"lr": 0.05}}}
    yield genlab.fit(config, out=tmp_path_factory.mktemp("tint") / "tint")
    unregister_family("tint")
    unregister_capability("colorize")


def test_a_capability_of_ones_own_brings_its_verb_api_function_and_route(tint_run, pixel_run, tmp_path):
    from genlab.serving import ServeConfig, serve_app
    from tests.conftest import running

    assert "colorize" in invoke("--help").output, "its verb is a command"
    grey = (np.linspace(0, 255, 64).reshape(8, 8)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    done = invoke("colorize", tint_run.path, tmp_path / "grey.png", "--out", tmp_path / "cli.png")
    assert done.exit_code == 0 and "wrote" in done.output, done.output
    colorize_file(tint_run.path, tmp_path / "grey.png", tmp_path / "api.png")
    with Image.open(tmp_path / "cli.png") as cli, Image.open(tmp_path / "api.png") as api:
        assert cli.mode == "RGB" and cli.size == (8, 8) and cli.tobytes() == api.tobytes()
    refused = invoke("colorize", pixel_run.path, tmp_path / "grey.png", "--out", tmp_path / "x.png")
    assert refused.exit_code == 1 and "a pixel_gaussian run; colorize needs a tint run" in refused.output
    with pytest.raises(genlab.GenlabError, match="a pixel_gaussian run; colorize needs a tint run"):
        colorize_file(pixel_run.path, tmp_path / "grey.png", tmp_path / "x.png")

    with running(serve_app([tint_run.path, pixel_run.path], ServeConfig())) as url:
        import httpx

        image = base64.b64encode((tmp_path / "grey.png").read_bytes()).decode()
        answer = httpx.post(f"{url}/v1/images/colorize", json={"model": "tint", "image": image}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = base64.b64decode(answer.json()["data"][0]["b64_json"])
        with Image.open(io.BytesIO(served)) as im, Image.open(tmp_path / "api.png") as api:
            assert im.tobytes() == api.tobytes(), "the route draws what the API function draws"
        wrong = httpx.post(f"{url}/v1/images/colorize", json={"model": "pixels", "image": image}, timeout=30)
        assert wrong.status_code == 400 and "pixel_gaussian model, which does not serve" in wrong.text
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert {m["id"]: m["genlab"]["kind"] for m in models} == {"tint": "colorize", "pixels": "images"}


def test_a_family_is_checked_against_its_capabilities_when_it_registers():
    class HalfConfig(ModelConfig):
        family: Literal["half"] = "half"
        capabilities: ClassVar[tuple[str, ...]] = ("upscale", "latent")

    class Half(GenerativeModel):
        Config = HalfConfig

        def upscale(self, images, name="images"):
            return images

    with pytest.raises(genlab.GenlabError) as err:
        register_family(Half)
    said = str(err.value)
    assert "family 'half': it declares no `media`" in said
    assert "upscale needs check_input, scale" in said and "latent needs interpolate, latent_dim, log_likelihood" in said
    assert "half" not in genlab.models.family_names(), "nothing half-checked is registered"
    with pytest.raises(ValueError, match="'images' is registered twice"):
        register_capability(Capability("images", Colorizer))


@pytest.mark.parametrize("family", sorted(BUILTIN))
def test_every_builtin_family_has_what_its_capabilities_need(family):
    from genlab.capabilities import check_family

    check_family(family_class(family))
    assert not hasattr(GenerativeModel, "media"), "the base class holds no modality's default"


# --- no layer above the families tells them apart by name, reads their fields, or imports upward ----------------

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
    """`x.family == "gan"`, `task in ("upscale", "tabular")`, `"image" != modality`, `served.kind == "text"`..."""
    if not isinstance(node, ast.Compare):
        return False
    sides = (node.left, *node.comparators)
    served_kind = any(isinstance(n, ast.Attribute) and n.attr == "kind" and str(_names(n.value)).startswith("served")
                      for n in sides)
    return (served_kind or any(_names(n) in ("family", "task", "modality", "serves") for n in sides)) \
        and any(_strings(n) for n in sides)


def test_no_layer_branches_on_a_family_task_kind_or_modality_name():
    found = []
    for path in _layer_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if _branches_on_a_name(node):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and node.value in BUILTIN and path not in NAMING:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: names the family {node.value!r}")
    assert not found, "ask the capability (genlab/capabilities) or the family instead:\n" + "\n".join(found)


def test_the_source_check_catches_what_it_forbids(tmp_path):
    code = ("if run.model.task == 'upscale': pass\nx = family != 'gan'\ny = modality in ('image', 'text')\n"
            "z = family in family_names()\nw = served.kind == 'text'")
    caught = [n for n in ast.walk(ast.parse(code)) if _branches_on_a_name(n)]
    assert len(caught) == 4 and len(_layer_files()) > 40


def _served_classes() -> dict[str, Path]:
    """Each served kind's class name -> the capability module that defines it."""
    found = {}
    for path in (SRC / "capabilities").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.startswith("Served"):
                found[node.name] = path
    return found


def test_no_layer_asks_which_served_class_a_model_is_outside_its_capability():
    classes, found = _served_classes(), []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _names(node.func) == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for kind in kinds:
                    if _names(kind) in classes and classes[_names(kind)] != path:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    assert len(classes) >= 7 and not found, "give the served kind a method instead:\n" + "\n".join(found)


FAMILY_FIELDS = sorted({n for f in BUILTIN for n in family_config(f).model_fields} - set(ModelConfig.model_fields))


def _reads_a_family_field(node: ast.AST) -> str | None:
    """`model.config.scale`, `run.config.model.lora`, `cfg.model.latent_dim`, `getattr(x.config, "lora")`."""
    if isinstance(node, ast.Attribute) and node.attr in FAMILY_FIELDS:
        owner = node.value
        if _names(owner) == "config":
            return node.attr
        if _names(owner) == "model" and isinstance(owner, ast.Attribute) and _names(owner.value) in ("config", "cfg"):
            return node.attr
    if isinstance(node, ast.Call) and _names(node.func) == "getattr" and len(node.args) >= 2:
        target, name = node.args[0], node.args[1]
        if isinstance(name, ast.Constant) and name.value in FAMILY_FIELDS and _names(target) in ("config", "model"):
            return name.value
    return None


def test_no_layer_above_the_families_reads_a_family_field():
    found = []
    for path in _layer_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (field := _reads_a_family_field(node)) is not None:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)} ({field})")
    assert not found, "the capability's Protocol names what it needs of a model; ask that:\n" + "\n".join(found)


def test_the_field_check_catches_what_it_forbids():
    code = ("a = model.config.latent_dim\nb = run.config.model.scale\nc = getattr(model.config, 'lora', None)\n"
            "d = cfg.model.class_conditional\ne = run.config.model.family\nf = served.model.spec")
    caught = [f for node in ast.walk(ast.parse(code)) if (f := _reads_a_family_field(node))]
    assert sorted(caught) == ["class_conditional", "latent_dim", "lora", "scale"]


def _owned_words() -> set[str]:
    """What belongs to one capability or family: its headline keys, the conditions its family's samples take
    (prompt, source), the keys its evaluation writes examples under, a family's loss tags."""
    keys = {figure.key.split(".")[0] for name in BUILTIN_CAPABILITIES for figure in capability(name).headline}
    return keys | {"prompt", "continuation", "prediction", "train/d_loss", "train/g_loss"}


OWNERS = ("capabilities/", "models/", "evaluation/", "responsible/", "serving/engine", "data/", "prepare/")


def test_no_layer_above_the_capabilities_reads_what_one_capability_owns():
    words, found = _owned_words(), []
    for path in _layer_files():
        if str(path.relative_to(SRC)).startswith(OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in words:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "ask the capability (its headline, its served kind) or the family:\n" + "\n".join(found)


# lowest first: an import string may name its own layer or a lower one
LAYERS = (("errors.py", "locate.py", "quiet.py", "version.py"), ("config/", "media/"), ("data/", "prepare/"),
          ("training/", "models/"), ("run.py",), ("evaluation/", "responsible/"),
          ("serving/",), ("capabilities/",), ("api.py", "export/", "study/", "serving/app.py", "serving/aws.py"),
          ("cli", "__init__.py", "__main__.py"))
LAZY_REGISTRY = "config/families.py"  # names the families, which sit above it


def _layer(relative: str) -> int:
    return max(i for i, prefixes in enumerate(LAYERS) for p in prefixes if relative.startswith(p))


def test_no_import_string_points_to_a_higher_layer():
    found, seen = [], 0
    for path in SRC.rglob("*.py"):
        relative = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"genlab(\.\w+)+:\w+", node.value):
                seen += 1
                module = node.value.split(":")[0].removeprefix("genlab.").replace(".", "/")
                target = next(t for t in (f"{module}.py", f"{module}/__init__.py") if (SRC / t).is_file())
                if _layer(target) > _layer(relative) and relative != LAZY_REGISTRY:
                    found.append(f"{relative}:{node.lineno}: {node.value}")
    assert seen > 10 and not found, "an import string names a higher layer:\n" + "\n".join(found)
