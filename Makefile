# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: on this project's machines the pinned version resolves to the local CPU wheel,
	# while the open range in pyproject.toml alone would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf runs/demo-digits-cnn
	$(VENV)/bin/trainlab train digits-cnn --run-dir runs/demo-digits-cnn
	$(VENV)/bin/trainlab eval runs/demo-digits-cnn --split test
	$(VENV)/bin/trainlab report runs/demo-digits-cnn
	rm -rf runs/demo-stdlib-gpt
	$(VENV)/bin/trainlab train stdlib-gpt --run-dir runs/demo-stdlib-gpt
	$(VENV)/bin/trainlab eval runs/demo-stdlib-gpt --split test
	$(VENV)/bin/trainlab sample runs/demo-stdlib-gpt --prompt "def read_config(path):" --max-new-tokens 120 --seed 0

test: install
	$(PY) -m pytest tests

test-fast: install  # the quick tier: no torchrun, SIGKILL, every-recipe or full-recipe quality runs
	$(PY) -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
