# cogd: one Makefile for set-up, build, test, lint and bench. `make` alone lists targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PORT ?= 5000
MODEL ?= examples/hello
# Tests run in parallel; 2 workers fit this project's 2-core CI machines.
PYTEST_WORKERS ?= 2
# The cargo profile `lint` and `cargo-test` build with: `release` for `make
# test` (the build that `install` and `bench` use), `dev` for `make check`
# (debug builds, several times quicker to rebuild).
PROFILE ?= release

.PHONY: help serve test install build-dev browser redis cargo-test pytest lint fmt check bench fuzz soak clean

help: ## list the targets (what `make` alone does)
	@echo "make serve, then make check while changing things and make test before sending them:"
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

build-dev: $(VENV)/.deps ## build a debug server and extension and install them in editable mode
	cargo build -p cogd --bin cogd
	mkdir -p $(dir $(SERVER_BIN))
	cp target/debug/cogd $(SERVER_BIN)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop

serve: install ## build, install and serve examples/hello (MODEL=dir PORT=n to change)
	$(BIN)/cogd serve $(MODEL) --port $(PORT)

test: install lint cargo-test pytest ## release build: install, lint, and run every test (as CI does)

# The same lint and tests on debug builds: `PROFILE` is `dev` for `check` and
# what it runs, and `pytest` runs against the debug install of `build-dev`.
check: PROFILE = dev
check: build-dev lint cargo-test pytest ## the quick loop: test and lint as `test` does, on debug builds

cargo-test: ## Rust unit tests (release; debug under `make check`)
	cargo test -p cogd --profile $(PROFILE)

# The playground's browser tests drive Debian's Chromium through Playwright
# (from tests/requirements.txt); Playwright's own browser downloads are not used.
browser: ## install the system Chromium the browser tests drive, when missing
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# The scale-out tests start their own Debian redis-server on a free port.
redis: ## install the redis-server the scale-out tests start, when missing
	@command -v redis-server >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; }

pytest: browser redis ## end-to-end tests against what is installed (`install` or `build-dev`)
	$(BIN)/pytest -n $(PYTEST_WORKERS)

# mypy checks the Python package (strict, see pyproject.toml) against
# `cogd/_native.pyi`, and stubtest checks that stub against the extension as
# built: the one installed (`install`, or `build-dev` under `check`), else a
# debug build made here.
lint: $(VENV)/.deps ## rustfmt, clippy, ruff, mypy and stubtest, as CI runs them (clippy in debug under `make check`)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --profile $(PROFILE) -- -D warnings
	$(BIN)/ruff check python tests bench examples
	$(BIN)/ruff format --check python tests bench examples
	$(BIN)/mypy
	@$(PY) -c "import cogd._native" 2>/dev/null || $(MAKE) --no-print-directory build-dev
	$(PY) -m mypy.stubtest cogd._native

fmt: $(VENV)/.deps ## format Rust and Python
	cargo fmt --all
	$(BIN)/ruff format python tests bench examples
	$(BIN)/ruff check --fix python tests bench examples

# The property tests run 256 cases each in `cargo-test`; `fuzz` runs many more.
FUZZ_CASES ?= 100000
# `soak` runs the soak test (tests/test_soak.py) with this many predictions.
SOAK_N ?= 10000

fuzz: ## property tests of the protocol codec, messages and request parsing, FUZZ_CASES each
	PROPTEST_CASES=$(FUZZ_CASES) cargo test -p cogd --release properties

soak: install ## the soak test with SOAK_N predictions, printing its report
	COGD_SOAK_N=$(SOAK_N) $(BIN)/pytest -p no:xdist -s tests/test_soak.py

bench: install redis ## cogd side by side with the reference runtime and the floor (bench/README.md)
	$(PY) bench/suite.py $(BENCH_ARGS)

clean: ## remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) dist
