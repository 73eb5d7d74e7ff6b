# The two commands a newcomer needs: `make test` and `make demo`. Everything they need is
# installed on first use and reused afterwards; build caches live outside the repo.
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(or $(OPENAI_POLICY_CACHE),$(HOME)/.cache/openai-policy-operator)
TIKTOKEN_DIR := $(CACHE)/tiktoken
PYTEST_ARGS ?=

.PHONY: test demo setup venv redis control-plane tiktoken promtool krew lint crds clean bench bench-quick bench-streaming bench-memory bench-operator wrk fuzz \
	node images cluster cluster-down

# The same script builds the images' environments (Dockerfile.*), so CI tests what ships.
$(VENV)/.installed: pyproject.toml constraints.txt scripts/install-python-deps.sh
	PYTHON=$(PYTHON) scripts/install-python-deps.sh $(VENV) --extra dev --editable
	touch $@

venv: $(VENV)/.installed

redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: install Debian's redis-server package (needs root)" >&2; exit 1; fi; }

control-plane:
	scripts/setup-control-plane.sh

tiktoken: venv
	scripts/provision-tiktoken.sh $(PY) $(TIKTOKEN_DIR)

# promtool (Debian's prometheus package) runs the alerts' unit tests; krew validates and installs
# the kubectl plugin's release manifest (built from its Go module, cached like the control plane).
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool is missing: install Debian's prometheus package (needs root)" >&2; exit 1; fi; }

krew:
	scripts/setup-krew.sh >/dev/null

setup: venv redis control-plane tiktoken promtool krew

# Style, formatting, types (strict for the api and store packages) and the import layers.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy -p openai_policy_api -p openai_policy_store -p openai_policy_sidecar -p openai_policy_operator \
	  -p openai_policy_kubectl
	$(VENV)/bin/lint-imports

# The e2e tests run on real pods: e2e/node/run.sh builds the images, brings up the project's own
# one-node cluster, installs the chart, runs pytest, and tears the node down (checking nothing is
# left). Where a real node cannot start, it says why in one line and the rest runs.
test: setup lint
	KUBEBUILDER_ASSETS="$$(scripts/setup-control-plane.sh)" TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" \
	  e2e/node/run.sh $(PY) -m pytest $(PYTEST_ARGS)

# The real node's pieces (as root: Debian's containerd, runc, buildah; kubelet, kube-scheduler,
# kube-proxy, crictl, CoreDNS built from their Go modules), cached by version like the control plane.
node: control-plane
	scripts/setup-node.sh

# Both images built from the Dockerfiles with buildah (stand-in bases where no registry answers).
images: node venv
	scripts/build-images.sh

# A one-node cluster for your own use: `make cluster`, then KUBECONFIG=<printed path>; `make cluster-down`.
cluster: node venv
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down
	scripts/cluster.sh check-clean

# The long run of the sidecar's schema-driven fuzz suite (make test runs a pass of at most 20 seconds):
# every failure is collected, and the figures are written to FUZZ_REPORT.
FUZZ_EXAMPLES ?= 1000
FUZZ_SECONDS ?= 300
FUZZ_REPORT ?= $(CACHE)/fuzz-report.json

fuzz: venv tiktoken
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_KEEP_GOING=1 FUZZ_REPORT=$(FUZZ_REPORT) \
	  TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" $(PY) -m pytest tests/fuzz -q -s -p no:cacheprovider $(PYTEST_ARGS)

DEMO_ARGS ?=

# On the real node where it can start (real pods; with OPENAI_API_KEY set the show stays local,
# since pods on that node reach no outside API), else on the local control plane.
demo: setup
	KUBEBUILDER_ASSETS="$$(scripts/setup-control-plane.sh)" TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" \
	  OPENAI_POLICY_E2E_NODE=$(if $(OPENAI_API_KEY),0,$${OPENAI_POLICY_E2E_NODE:-1}) \
	  e2e/node/run.sh $(PY) -m e2e.demo $(DEMO_ARGS)

BENCH_ARGS ?=

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing (Debian package wrk, needs root): the benchmark falls back to a slower Python load generator" >&2; fi; }

bench: venv redis tiktoken wrk
	TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" $(PY) bench/run_sidecar_bench.py $(BENCH_ARGS)

bench-quick: venv redis tiktoken wrk
	TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" $(PY) bench/run_sidecar_bench.py --quick --no-litellm $(BENCH_ARGS)

# Issue 15's streaming profile: 200, 500 and 1,000 concurrent streams, direct, through one sidecar
# with Redis, and through LiteLLM (bench/streaming_bench.py; builds its Go upstream and client).
bench-streaming: venv redis tiktoken
	TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" $(PY) bench/streaming_bench.py $(BENCH_ARGS)

# Where a sidecar's memory goes, layer by layer (bench/memory_breakdown.py).
bench-memory: venv redis tiktoken
	TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" $(PY) bench/memory_breakdown.py --redis $(BENCH_ARGS)

bench-operator: setup
	KUBEBUILDER_ASSETS="$$(scripts/setup-control-plane.sh)" TIKTOKEN_CACHE_DIR="$(TIKTOKEN_DIR)" \
	  $(PY) bench/operator_bench.py $(BENCH_ARGS)

# Every generated file, from the policy model and the operator: crds/, docs/policy-reference.md
# and the chart's crds/ (the same CRD plus kopf's peering CRDs). Tests fail when any is stale.
crds: venv
	$(PY) -m openai_policy_operator.crd --write
	PYTHON=$(PY) scripts/sync-chart-crds.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
