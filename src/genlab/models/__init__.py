"""Model families, one file each, all implementing `GenerativeModel`; registered by name."""

from genlab.models.base import FAMILIES, GenerativeModel, register_family
from genlab.models.diffusion import Diffusion

__all__ = ["FAMILIES", "Diffusion", "GenerativeModel", "register_family"]
