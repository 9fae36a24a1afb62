"""Export a run for deployment: a container build context with Kubernetes manifests, or ONNX graphs."""

from genlab.export.docker import export_docker
from genlab.export.onnx import export_onnx

__all__ = ["export_docker", "export_onnx"]
