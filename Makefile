# The two commands the README promises: `make demo` and `make test`.
CARGO ?= cargo
BIN := target/release
PROMPT ?= Explain in two sentences why the sky is blue.

# The MLX backend is on where MLX runs: Linux x86_64 (CPU, against the mlx-cpu wheel setup.sh
# unpacks into target/) and Apple Silicon (Metal, MLX built from source). MLX=0 leaves it out.
PLATFORM := $(shell uname -s)-$(shell uname -m)
ifneq ($(filter $(PLATFORM),Linux-x86_64 Darwin-arm64),)
MLX ?= 1
else
MLX ?= 0
endif
ifeq ($(MLX),1)
FEATURES := --features minervad/mlx,minerva-e2e/mlx
ifeq ($(PLATFORM),Linux-x86_64)
export MINERVA_MLX_DIR ?= $(CURDIR)/target/mlx-cpu-0.32.4/mlx
endif
endif

.PHONY: setup build demo test lint clean-models

setup:
	MLX=$(MLX) ./scripts/setup.sh

build: setup
	$(CARGO) build --release --bins $(FEATURES)

# Pull the default model, start the daemon (`minerva run` starts it when none answers) and
# stream an answer with the stats line.
demo: build
	$(BIN)/minerva pull smollm2-135m
	$(BIN)/minerva run smollm2-135m "$(PROMPT)" --verbose

# Unit tests and the end-to-end tests (real daemon, real CLI, real model, fetched once and
# cached under target/minerva-test-home). Release profile: the same build as `make demo`.
test: setup
	$(CARGO) test --release --workspace $(FEATURES)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets $(FEATURES) -- -D warnings
