# Two entry points a new user needs: `make simulate` (main job) and `make test` (the suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin


.PHONY: setup browser simulate demo test test-all lint bench clean

# Create the virtualenv. --system-site-packages lets an already installed torch (for example a
# site's CUDA build) be used as is; only when no torch imports is the local CPU torch 2.13.0
# installed, before anything else can make pip resolve torch on its own.
$(BIN)/seqanom: pyproject.toml
	$(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,federation,serve]"
	@touch $@

setup: $(BIN)/seqanom

simulate: setup
	$(BIN)/seqanom simulate --out runs/simulate

demo: setup
	$(BIN)/seqanom demo --out runs/demo

# the live page's test drives Debian's headless Chromium (installed here when missing: root)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }

test: setup browser
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-all: setup browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) runs build *.egg-info
