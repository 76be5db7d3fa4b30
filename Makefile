# kitseg: `make demo` installs and runs the demo; `make test` installs and runs the tests.
# GPU users: install your CUDA build of torch into the venv first (see README), then make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this version lies on disk on the project's machines; any torch >= 2.1 works.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench bench-quick lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/kitseg demo -o kitseg_demo

test: install
	$(PY) -m pytest -q -n 2 --durations=15

# every benchmark in bench/ (hours on 2 CPU cores; rewrites BENCHMARKS.md); bench-quick: a check that all run
bench: install
	$(PY) bench/run_all.py

bench-quick: install
	$(PY) bench/run_all.py --quick

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache kitseg_demo
