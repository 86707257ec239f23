# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
# TORCH_SPEC pins a CPU-friendly torch by default; on a CUDA machine override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench models build tiny small
	$(BIN)/workbench bench --model small --out runs/bench

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generation.py --repeats 3
	$(BIN)/python benchmarks/bench_driver_lateness.py
	$(BIN)/python benchmarks/bench_sim_fidelity.py

clean:
	rm -rf $(VENV) runs fits .pytest_cache
