"""schemathesis over genlab serve's OpenAPI spec at bench scale: thousands of generated requests, 5xx counted.

Serves a briefly trained language model and digits diffusion model (as tests/test_serving_fuzz.py
does, with more examples per operation) and prints requests per operation and the time taken; an
answer of 500 or more stops the run with the request that caused it. Figures only.

Usage: python bench/serving_fuzz.py [EXAMPLES_PER_OPERATION]
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import genlab
from genlab.serving import ServeConfig, serve_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import LM, tiny  # noqa: E402
from tests.test_serving_fuzz import fuzz  # noqa: E402

warnings.filterwarnings("ignore")


def main() -> None:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    tmp = Path(tempfile.mkdtemp())
    lm = genlab.fit(None, overrides=LM, out=tmp / "lm")
    digits = genlab.fit(None, overrides=tiny(), out=tmp / "digits")
    limits = {"max_n": 2, "max_steps": 10, "max_prompt_chars": 2000}  # 10: the tiny run's own steps
    app = serve_app([lm.path, digits.path], ServeConfig(names=["lm", "digits"], limits=limits, api_keys=["fuzz-key"]))
    start = time.perf_counter()
    counts = fuzz(app, examples)
    seconds = time.perf_counter() - start
    for name, count in counts.items():
        print(f"  {name:<32} {count:6d} requests")
    print(f"{sum(counts.values())} requests in {seconds:.0f} s, no answer of 500 or more")


if __name__ == "__main__":
    main()
