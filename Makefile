# keyward: common tasks. `make help` lists them.

CARGO ?= cargo

.PHONY: help test-deps test lint ci quickstart stop build

help:
	@echo "make test-deps   install openssh, OpenBao (.tools/venv) and check PostgreSQL on 127.0.0.1:5432"
	@echo "make test        test-deps, then the whole test suite against real OpenBao and PostgreSQL"
	@echo "make lint        rustfmt check and clippy with warnings as errors"
	@echo "make ci          lint + test (what .ci/run runs)"
	@echo "make build       release build of every binary"
	@echo "make quickstart  OpenBao dev server + keyward-server + a demo tenant, with curl examples"
	@echo "make stop        stop what quickstart started (its data in .run/ stays)"

test-deps:
	scripts/install-test-deps

# The end-to-end tests run the real keyward-agent binary: build every binary first.
test: test-deps
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --all-targets --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

ci: lint test

build:
	$(CARGO) build --release --locked

quickstart:
	scripts/quickstart

stop:
	scripts/quickstart-stop
