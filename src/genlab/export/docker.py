"""A container build context for `genlab serve`, with Kubernetes manifests.

The context holds the model folder, the serve config, genlab's own source (so the image builds
without a package index entry for genlab), a Dockerfile (CPU torch, a non-root user, a
healthcheck, the exact serve command), `.dockerignore`, and `k8s/`: a Deployment with liveness
and readiness probes, a Service and a HorizontalPodAutoscaler.
"""

from __future__ import annotations

import re
import shutil
from importlib import metadata
from pathlib import Path

import torch
import yaml

import genlab
from genlab.errors import GenlabError
from genlab.serving.folders import model_folder

PORT = 8000
COMMAND = ["genlab", "serve", "model", "--config", "serve.yaml"]  # run from the image's WORKDIR

DOCKERFILE = """\
# Build: docker build -t {image} .    Run: docker run -p {port}:{port} -e GENLAB_API_KEYS=... {image}
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
EXPOSE {port}
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \\
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"]
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
    _copy_source(out / "genlab-src")
    # the probes poll /health and /ready without a key
    serve = {"host": "0.0.0.0", "port": PORT, "names": [name], "public": ["health", "ready"]}  # noqa: S104
    (out / "serve.yaml").write_text(yaml.safe_dump(serve, sort_keys=False))
    (out / "Dockerfile").write_text(DOCKERFILE.format(image=image, port=PORT, torch=torch.__version__.split("+")[0],
                                                      command=_json_list(COMMAND)))
    (out / ".dockerignore").write_text(DOCKERIGNORE)
    (out / "k8s").mkdir()
    for kind, manifest in _manifests(slug, image).items():
        (out / "k8s" / f"{kind}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


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


def _manifests(slug: str, image: str) -> dict[str, dict]:
    labels = {"app": f"genlab-{slug}"}
    probe = {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = {
        "name": "genlab", "image": image, "ports": [{"containerPort": PORT, "name": "http"}],
        "env": [{"name": "GENLAB_API_KEYS", "valueFrom": {"secretKeyRef": {
            "name": f"genlab-{slug}-keys", "key": "keys", "optional": True}}}],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 3},
        "readinessProbe": {**probe, "httpGet": {"path": "/ready", "port": PORT}, "initialDelaySeconds": 10},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"genlab-{slug}", "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 45, "containers": [container]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"genlab-{slug}", "labels": labels},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": PORT, "name": "http"}]}}
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": f"genlab-{slug}"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"genlab-{slug}"},
                    "minReplicas": 1, "maxReplicas": 4,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                        "type": "Utilization", "averageUtilization": 70}}}]}}
    return {"deployment": deployment, "service": service, "hpa": hpa}
