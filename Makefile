# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
# torch is pinned to 2.13.0 here because that CPU build ships with this reference machine
# (a looser pin pulls a multi-GB CUDA build); the package itself accepts torch>=2.4.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_RUN ?= runs/demo

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# litdata (the stream extra) requires torchvision, and PyPI's torchvision for torch 2.13 is a CUDA build
	# that pulls the CUDA torch: install it without, as it imports torchvision only to decode images and video
	$(PY) -m pip install -q --no-deps "litdata>=0.2.76,<0.3"
	touch $@

demo: setup
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/genlab fit configs/digits-diffusion.yaml --out $(DEMO_RUN)
	$(VENV)/bin/genlab sample $(DEMO_RUN) --n 64 --out $(DEMO_RUN)/samples/demo.png
	$(VENV)/bin/genlab evaluate $(DEMO_RUN)
	$(VENV)/bin/genlab info $(DEMO_RUN)

lint: setup
	$(VENV)/bin/ruff check src tests bench

test: lint  # two workers, one per core; each test file runs whole in one of them (its fixtures are shared there)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: setup  # the speed benchmarks; the README lists the others, each run on its own
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/diffusion_throughput.py
	$(PY) bench/gan_throughput.py
	$(PY) bench/transformer_levers.py
	$(PY) bench/transformer_shakespeare.py

clean:
	rm -rf $(VENV) runs .pytest_cache
