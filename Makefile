# cogd: one Makefile for set-up, build, test, lint and bench. `make help` lists targets.
.DEFAULT_GOAL := serve
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PORT ?= 5000
MODEL ?= examples/hello
# Tests run in parallel; 2 workers fit this project's 2-core CI machines.
PYTEST_WORKERS ?= 2

.PHONY: help serve test install build-dev browser cargo-test pytest lint fmt check bench fuzz soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.deps: tests/requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "maturin>=1.5,<2" ruff -r tests/requirements.txt
	touch $@

# The standalone server goes into the wheel as cogd/bin/cogd-server: the
# `cogd` command execs it, so the server runs without a Python interpreter.
SERVER_BIN := python/cogd/bin/cogd-server

install: $(VENV)/.deps ## create .venv, build the release wheel and install it
	rm -rf dist
	cargo build --release -p cogd --bin cogd
	mkdir -p $(dir $(SERVER_BIN))
	strip -o $(SERVER_BIN) target/release/cogd
	$(BIN)/maturin build --release --interpreter $(PY) -o dist
	$(BIN)/pip install -q --force-reinstall --no-deps dist/cogd-*.whl

build-dev: $(VENV)/.deps ## build a debug wheel and install it in editable mode (fast iteration)
	cargo build -p cogd --bin cogd
	mkdir -p $(dir $(SERVER_BIN))
	cp target/debug/cogd $(SERVER_BIN)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop

serve: install ## build, install and serve examples/hello (MODEL=dir PORT=n to change)
	$(BIN)/cogd serve $(MODEL) --port $(PORT)

test: install lint cargo-test pytest ## build everything, lint, and run every test

cargo-test: ## Rust unit tests
	cargo test -p cogd --release

# The playground's browser tests drive Debian's Chromium through Playwright
# (from tests/requirements.txt); Playwright's own browser downloads are not used.
browser: ## install the system Chromium the browser tests drive, when missing
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

pytest: browser ## end-to-end tests against the installed wheel
	$(BIN)/pytest -n $(PYTEST_WORKERS)

lint: $(VENV)/.deps ## rustfmt, clippy and ruff, as CI runs them
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	$(BIN)/ruff check python tests bench examples
	$(BIN)/ruff format --check python tests bench examples

fmt: $(VENV)/.deps ## format Rust and Python
	cargo fmt --all
	$(BIN)/ruff format python tests bench examples
	$(BIN)/ruff check --fix python tests bench examples

check: lint test ## lint, then every test

# The property tests run 256 cases each in `cargo-test`; `fuzz` runs many more.
FUZZ_CASES ?= 100000
# `soak` runs the soak test (tests/test_soak.py) with this many predictions.
SOAK_N ?= 10000

fuzz: ## property tests of the protocol codec, messages and request parsing, FUZZ_CASES each
	PROPTEST_CASES=$(FUZZ_CASES) cargo test -p cogd --release properties

soak: install ## the soak test with SOAK_N predictions, printing its report
	COGD_SOAK_N=$(SOAK_N) $(BIN)/pytest -p no:xdist -s tests/test_soak.py

bench: install ## cogd side by side with the reference runtime and the floor (bench/README.md)
	$(PY) bench/suite.py $(BENCH_ARGS)

clean: ## remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) dist
