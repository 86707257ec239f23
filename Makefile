# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
# TORCH_SPEC pins a CPU-friendly torch by default; on a CUDA machine override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: demo test lint bench lab setup browser clean peers bench-peers

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The design review for the default scenario on the embedded model.
demo: $(STAMP)
	$(BIN)/workbench models build tiny
	$(BIN)/workbench report scenarios/chat.yaml --out reports
	@echo "open reports/chat.html (measured runs are under reports/runs/)"

# Headless Chromium for the report-rendering test (Debian's package; needs root to install).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null) || echo "could not install chromium: the rendering test will be skipped"; \
	  else echo "chromium missing and not root: the rendering test will be skipped"; fi; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	WORKBENCH_CACHE=$(CURDIR)/.cache $(BIN)/python -m pytest
	WORKBENCH_CACHE=$(CURDIR)/.cache WORKBENCH_SMOKE=1 $(BIN)/python -m pytest $(NBVAL) notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generation.py --repeats 3
	$(BIN)/python benchmarks/bench_driver_lateness.py
	$(BIN)/python benchmarks/bench_sim_fidelity.py

# Peers: llama.cpp's OpenAI server (llama-cpp-python, compiled here: ~8 min on 2 idle cores) and
# guidellm. guidellm requires torch unpinned; the constraints file holds torch at the installed
# build, so pip can never swap in a CUDA torch of several GB.
PEERS_STAMP := $(VENV)/.peers-installed

$(PEERS_STAMP): $(STAMP)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	$(BIN)/pip install --quiet -c $(VENV)/torch-pin.txt -e '.[dev,peers]'
	touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)
	WORKBENCH_CACHE=$(CURDIR)/.cache $(BIN)/python -m pytest -m peers

bench-peers: $(PEERS_STAMP)
	WORKBENCH_CACHE=$(CURDIR)/.cache $(BIN)/python benchmarks/bench_peers.py --repeats 3

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs fits .cache .pytest_cache reports/*.html reports/*.ipynb reports/runs
