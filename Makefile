# Ferry: the developers' entry points. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
STACK := e2e/local/stack.sh
FERRY_STACK_DIR ?= /tmp/ferry-stack
export FERRY_STACK_DIR

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# ---- the two commands -------------------------------------------------------

.PHONY: demo
demo: ## Local stack + operator + sample Pipeline + simulator under load, with live progress
	bash e2e/local/demo.sh

.PHONY: test
test: ## Every check and test: static checks, unit tests, then integration tests on the local stack
	bash e2e/local/test.sh

# ---- dependencies ------------------------------------------------------------

.PHONY: deps
deps: ## Install every package and tool of e2e/deps/deps.txt that is missing (demo and test run it first)
	bash e2e/deps/deps.sh install

.PHONY: doctor
doctor: ## List what e2e/deps/deps.txt declares and this machine lacks; installs nothing
	bash e2e/deps/deps.sh doctor

.PHONY: test-fresh
test-fresh: ## A bookworm root from debootstrap, own namespaces: deps, make demo, make test (with and without ../shared)
	bash e2e/fresh/run.sh

# ---- static checks ------------------------------------------------------------

.PHONY: fmt-check
fmt-check: ## rustfmt, as CI runs it
	$(CARGO) fmt --all -- --check

.PHONY: clippy
clippy: ## clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: crd
crd: ## Regenerate crds/pipeline.yaml (and the chart's copy) from the Rust types
	$(CARGO) run -q -p ferry-operator --bin crdgen > crds/pipeline.yaml
	@if [ -d charts/ferry/crds ]; then cp crds/pipeline.yaml charts/ferry/crds/pipeline.yaml; fi

.PHONY: crd-check
crd-check: ## Fail when crds/pipeline.yaml differs from what crdgen prints
	@$(CARGO) run -q -p ferry-operator --bin crdgen | diff -u crds/pipeline.yaml - \
	  || { echo "crds/pipeline.yaml is stale: run 'make crd' and commit it"; exit 1; }
	@if [ -f charts/ferry/crds/pipeline.yaml ]; then diff -u crds/pipeline.yaml charts/ferry/crds/pipeline.yaml \
	  || { echo "charts/ferry/crds/pipeline.yaml differs from crds/pipeline.yaml: run 'make crd'"; exit 1; }; fi

.PHONY: check
check: fmt-check clippy crd-check ## All static checks

# ---- tests ----------------------------------------------------------------------

.PHONY: build
build: ## Build every binary and test target
	$(CARGO) build --workspace --all-targets

.PHONY: test-unit
test-unit: ## Pure unit tests, no services needed
	$(CARGO) test --workspace --lib --bins

.PHONY: test-integration
test-integration: ## Integration tests against the running local stack (make stack-up first)
	$(CARGO) test --workspace --test '*' -- --test-threads=2

# ---- the local stack ----------------------------------------------------------------

.PHONY: stack-up
stack-up: ## Start Redis, Kafka (KRaft) and Kubernetes as local processes
	bash $(STACK) up

.PHONY: stack-down
stack-down: ## Stop the local stack and remove its state (caches stay)
	bash $(STACK) down

.PHONY: stack-status
stack-status: ## One line per component
	bash $(STACK) status

# ---- chart and kind path ----------------------------------------------------------------

.PHONY: chart-check
chart-check: ## helm lint, helm template | kubeconform -strict, RBAC and values checks
	bash e2e/chart/check.sh

.PHONY: kind-check
kind-check: ## shellcheck and hadolint the kind path, dry-run its manifests on the local cluster
	bash e2e/kind/check.sh

.PHONY: images-check
images-check: ## Both images' build steps in a bookworm root (no Docker); ldd against the runtime base's packages
	bash e2e/deps/deps.sh install images
	bash e2e/images/check.sh

.PHONY: chart-install-test
chart-install-test: ## A real helm install/uninstall into the local cluster
	bash e2e/chart/install-test.sh

# ---- benchmarks (figures, never timed tests) -------------------------------------

.PHONY: bench-receiver
bench-receiver: ## One receiver over 1,000,000 dsdata records, beside redis-benchmark and a bare consume
	bash worker/benches/receiver.sh

.PHONY: bench
bench: ## Ferry's receiver vs Redpanda Connect and the Kafka/Redis limits, 2M records: bench/results/
	bash bench/run.sh

.PHONY: dashboard-screenshot
dashboard-screenshot: ## Refresh docs/dashboard-*.png: the dashboard's browser test on the local cluster, its screenshots copied
	bash e2e/local/dashboard-screenshot.sh

.PHONY: bench-api
bench-api: ## The read API: one source's 100-value history at 1/50/500 clients beside a direct LRANGE, flat out and at one rate for both; SSE event delay
	bash bench/api.sh

.PHONY: bench-operator
bench-operator: ## 1000 paused Pipelines on the local Kubernetes: reconcile time, RSS, steady CPU
	bash bench/operator.sh

# ---- faults and scaling -----------------------------------------------------------

.PHONY: test-faults
test-faults: ## Fault suite at full size (kills, Redis/Kafka outages, rebalances, operator kill, slow Redis, no flapping): one table
	bash e2e/faults.sh

.PHONY: bench-scaling
bench-scaling: ## Autoscaler reaction: lag over threshold -> spec.replicas -> pods Ready, median of 5, beside KEDA's defaults
	bash bench/scaling/run.sh

.PHONY: fuzz
fuzz: ## Fuzz the record decoders and the rule language (cargo-fuzz on nightly; SECONDS per target, default 600)
	bash e2e/fuzz.sh $${SECONDS_PER_TARGET:-600}
