# `make image` and `make test` install what is missing, then do their job.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ACTVSM := $(VENV)/bin/actvsm
OUT ?= out
PYTEST_ARGS ?=

.PHONY: all deps system image boot test lint bench repro-check clean

all: image

system:
	@tools/ensure-packages tools/apt-packages.txt

$(VENV)/.installed: pyproject.toml | system
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

deps: system $(VENV)/.installed

image: deps
	$(ACTVSM) build images/default.yaml -o $(OUT)

# Boot the default image in QEMU + swtpm (a fresh TPM and disks each time; add
# `--state DIR` to `actvsm boot` to keep the data volume across boots).
boot: deps
	$(ACTVSM) boot $(OUT)/default

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check builder tests benchmarks
	$(VENV)/bin/mypy

bench: deps
	$(PY) -m benchmarks.run

repro-check: deps
	tools/repro-check images/default.yaml

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
