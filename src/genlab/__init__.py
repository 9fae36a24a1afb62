"""genlab: from raw data to a trained, evaluated generative model, for every model family."""

__version__ = "0.1.0"

from genlab.api import evaluate, fit, load, sample_to_file  # noqa: E402
from genlab.config import RunConfig, load_config  # noqa: E402
from genlab.errors import ConfigError, GenlabError  # noqa: E402
from genlab.run import Run  # noqa: E402

__all__ = ["ConfigError", "GenlabError", "Run", "RunConfig", "__version__", "evaluate", "fit", "load", "load_config",
           "sample_to_file"]
