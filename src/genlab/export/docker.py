"""A container build context for `genlab serve`, with Kubernetes manifests.

The context holds the model folder, the serve config (the API with a key on one port, the operations endpoints
on another), genlab's own source (so the image builds without a package index entry for genlab), a Dockerfile
(CPU torch, a non-root user, a healthcheck, the exact serve command), `.dockerignore`, and `k8s/` (`k8s.py`).
"""

from __future__ import annotations

import re
import shutil
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml

import genlab
from genlab.errors import GenlabError
from genlab.export.k8s import OPS_PORT, PORT, serve_config, startup_seconds, write_manifests
from genlab.serving.folders import load_model, model_folder

COMMAND = ["genlab", "serve", "model", "--config", "serve.yaml"]  # run from the image's WORKDIR

DOCKERFILE = """\
# Build: docker build -t {image} .    Run: docker run -p {port}:{port} -e GENLAB_API_KEYS=... {image}
# Port {port}: the API, with a key (/health aside). Port {ops}: /health, /ready, /metrics without one: not to publish
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU torch first, pinned, from PyTorch's CPU index (the default index would bring the CUDA build)
RUN pip install torch=={torch} --index-url https://download.pytorch.org/whl/cpu
COPY genlab-src /opt/genlab-src
RUN pip install /opt/genlab-src && rm -rf /opt/genlab-src
RUN useradd --create-home --uid 10001 genlab
WORKDIR /app
COPY --chown=genlab:genlab model /app/model
COPY --chown=genlab:genlab serve.yaml /app/serve.yaml
USER genlab
EXPOSE {port} {ops}
HEALTHCHECK --interval=30s --timeout=5s --start-period={start}s --retries=3 \\
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{ops}/health', timeout=4)"]
CMD {command}
"""

DOCKERIGNORE = "**/__pycache__\n**/*.pyc\n.git\nk8s/\n*.ckpt\n"


def export_docker(run: str | Path, out: str | Path, *, image: str | None = None) -> Path:
    """Write the build context for serving `run` (a run directory or model folder) into `out`."""
    folder, name = model_folder(run)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise GenlabError(f"--out {out}: exists and is not empty; choose a new folder")
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "model"
    image = image or f"genlab-{slug}:latest"
    out.mkdir(parents=True, exist_ok=True)
    if (Path(run) / "config.yaml").is_file():  # a run directory: its model card, fresh, goes with the model
        from genlab.api import card

        card(run)
    shutil.copytree(folder, out / "model")
    load_seconds = measure_load(out / "model")
    _copy_source(out / "genlab-src")
    (out / "serve.yaml").write_text(yaml.safe_dump(serve_config(name), sort_keys=False))
    (out / "Dockerfile").write_text(DOCKERFILE.format(image=image, port=PORT, ops=OPS_PORT, command=_json_list(COMMAND),
                                                      start=startup_seconds(load_seconds),
                                                      torch=torch.__version__.split("+")[0]))
    (out / ".dockerignore").write_text(DOCKERIGNORE)
    write_manifests(out / "k8s", slug, image, load_seconds)
    return out


def measure_load(folder: Path) -> float:
    """Seconds to load the model folder as the server does (the startup probe's measure); it loads, or fails here."""
    start = time.perf_counter()
    load_model(folder)
    return time.perf_counter() - start


def _json_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _copy_source(dest: Path) -> None:
    """genlab's package and a pyproject with its runtime dependencies, installable with pip."""
    shutil.copytree(Path(genlab.__file__).parent, dest / "src" / "genlab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requires = [r for r in metadata.requires("genlab") or [] if "extra ==" not in r]
    deps = "".join(f'    "{r}",\n' for r in requires)
    (dest / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "genlab"\nversion = "{metadata.version("genlab")}"\nrequires-python = ">=3.10"\n'
        f'dependencies = [\n{deps}]\n\n[project.scripts]\ngenlab = "genlab.cli:main"\n\n'
        '[tool.setuptools.packages.find]\nwhere = ["src"]\n\n'
        '[tool.setuptools.package-data]\n"genlab.data" = ["files/*.gz"]\n')

