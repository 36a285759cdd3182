# The two commands the README promises: `make demo` and `make test`.
CARGO ?= cargo
BIN := target/release
PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: setup build demo test lint clean-models

setup:
	./scripts/setup.sh

build: setup
	$(CARGO) build --release --bins

# Pull the default model, start the daemon (`minerva run` starts it when none answers) and
# stream an answer with the stats line.
demo: build
	$(BIN)/minerva pull smollm2-135m
	$(BIN)/minerva run smollm2-135m "$(PROMPT)" --verbose

# Unit tests and the end-to-end tests (real daemon, real CLI, real model, fetched once and
# cached under target/minerva-test-home). Release profile: the same build as `make demo`.
test: setup
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
