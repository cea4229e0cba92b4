# Maestro: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Heavy builds live in a versioned cache outside the repo, so a warm machine (and CI on
# it, which starts from a fresh clone) reuses them.
export MAESTRO_CACHE ?= $(HOME)/.cache/maestro
export CARGO_TARGET_DIR ?= $(MAESTRO_CACHE)/target
export CARGO_TERM_COLOR ?= never
CLUSTER := e2e/cluster

.PHONY: help deps tools build lint unit crds chart e2e test cluster-up cluster-down images demo bench chaos

help:
	@echo "make demo          bring up the local cluster, build and import the images, run the demo"
	@echo "make test          lint, unit tests, then the end-to-end tests on a real cluster"
	@echo "make cluster-up    start the local cluster (prints the KUBECONFIG path)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make images        build the agent, operator and pause images without Docker"
	@echo "make chart         sync crds/ into the Helm chart, render its kustomize bases, lint it"
	@echo "make bench         the benchmark on kwok fake nodes (prints a table; docs/benchmarks.md)"
	@echo "make chaos         the chaos suite on kwok fake nodes (prints a table; docs/reliability.md)"

deps:
	@bash $(CLUSTER)/install-deps.sh

tools: deps
	@bash $(CLUSTER)/build.sh

build:
	cargo build --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace --exclude maestro-e2e

# The Helm chart reads no file outside its folder: copy crds/ into it (it renders them as
# templates, so helm upgrade upgrades them), then render the kustomize bases from it. Tests
# fail when either copy is stale (operator/api/tests/chart_crds_fresh.rs, e2e/tests/helm.rs).
chart:
	rm -f charts/maestro/files/crds/*.yaml
	cp crds/*.yaml charts/maestro/files/crds/
	export PATH="$$(. $(CLUSTER)/versions.sh && echo "$$TOOLS_BIN"):$$PATH"; \
	bash charts/maestro/kustomize/generate.sh && helm lint --strict charts/maestro

# Uses the cluster KUBECONFIG names when it is set; otherwise boots the local one.
cluster-up:
	@if [ -n "$${KUBECONFIG:-}" ]; then echo "KUBECONFIG is set ($$KUBECONFIG): using that cluster"; \
	else $(MAKE) --no-print-directory tools && bash $(CLUSTER)/up.sh; fi

cluster-down:
	@bash $(CLUSTER)/down.sh

images: deps build
	@bash e2e/images/build-images.sh

# End-to-end tests against a running cluster (cluster-up first, or KUBECONFIG set).
e2e:
	@bash e2e/run.sh tests

test: lint unit
	@bash e2e/run.sh all

demo:
	@bash e2e/run.sh demo

# The benchmark: Maestro against a bare client on a kwok fake node (release build).
bench:
	@bash e2e/run.sh bench

# The chaos suite: 200 runs through each fault kind (CHAOS_ARGS=--smoke: the 50-run version
# `make test` runs).
chaos:
	@bash e2e/run.sh chaos
