# Every target sets itself up on a fresh machine: a .venv with the package and all its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
DEMO_ARGS ?=

.PHONY: setup test check demo lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]" -c constraints.txt
	touch $(STAMP)

setup: $(STAMP)

# A real Triton for tests/test_triton_real.py: nvidia-pytriton's tritonserver and a Python for its
# backend made from Debian's python3.11 (installs python3.11-venv with apt-get when missing).
TRITON := $(VENV)/triton/.ready
$(TRITON): $(STAMP) tests/triton_server.py
	$(PY) -m tests.triton_server
	touch $(TRITON)

# A real browser for tests/test_explorer.py: Debian's chromium, installed with apt-get when missing
# and driven by Playwright (the dev extra); Playwright's own browser download needs the internet.
# make test fails where it cannot be installed (as for Triton); a bare pytest run skips the
# browser test and says why.
CHROMIUM := $(VENV)/.chromium
$(CHROMIUM): $(STAMP) tests/browser.py
	$(PY) -m tests.browser
	touch $(CHROMIUM)

# PyTorch for the torch backend tests: PyPI's build with its CUDA libraries (5.4 GB, ~2 min once),
# installed by tests/torch_cache.py into $KERAS_GATES_CACHE (~/.cache/keras-gates), outside the
# venv. Where it cannot be installed (offline) the torch tests skip and say why.
# The whole suite, as CI runs it: three workers on two cores (a worker often waits on a child
# process, a server or the disk); the tests of a module share a worker (and its fixtures), the
# real-Triton modules one worker and one Triton (the scheduler: tests/conftest.py).
PYTEST_WORKERS ?= 3
test: $(STAMP) $(TRITON) $(CHROMIUM)
	$(PY) -m tests.torch_cache || echo "torch could not be installed: the torch tests will skip"
	$(PY) -m ruff check keras_gates export serving tests examples benchmarks
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --no-loadscope-reorder

# The inner loop: lint and every test not marked slow (no subprocess suites, installs, real
# Triton or README run-through), in under two minutes. make test before you push.
check: $(STAMP)
	$(PY) -m ruff check keras_gates export serving tests examples benchmarks
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --no-loadscope-reorder -m "not slow"

demo: $(STAMP)
	$(PY) examples/demo.py --out $(ARTIFACTS) $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check keras_gates export serving tests examples benchmarks
	$(PY) -m ruff format --check keras_gates export serving tests examples benchmarks

format: $(STAMP)
	$(PY) -m ruff format keras_gates export serving tests examples benchmarks
	$(PY) -m ruff check --fix keras_gates export serving tests examples benchmarks

bench: $(STAMP) $(TRITON)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/onnx_latency.py
	$(PY) benchmarks/triton_ragged.py
	$(PY) benchmarks/quantize.py
	$(PY) benchmarks/probe_speed.py
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) $(ARTIFACTS) build *.egg-info .pytest_cache
