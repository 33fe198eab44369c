# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv
# from requirements.lock the first time (a few minutes) and reuse it afterwards: the
# stamp file is only rebuilt when requirements.lock, setup.py or the set of packages
# change (the editable install maps only the packages that existed when it ran).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ebr-installed

# TFRS 0.7.7 needs Keras 2 (tf-keras): this must be set before TensorFlow is imported,
# in every process the targets start.
export TF_USE_LEGACY_KERAS := 1
export PYTHONDONTWRITEBYTECODE := 1

DEMO_ROOT ?= file://$(CURDIR)/var/demo
DEMO_SIZE ?= small
DEMO_SHARDS ?= 1
AIRFLOW_DIR ?=
AIRFLOW_PORT ?= 8080

.PHONY: venv test lint format demo airflow bench clean-demo help chromium wrk

help:
	@echo "make demo   build the environment if needed, then run the pipeline on a synthetic world"
	@echo "make test   build the environment if needed, then run the test suite"
	@echo "make lint   ruff check and ruff format --check (make format rewrites the files)"
	@echo "make airflow  start Airflow on http://127.0.0.1:$(AIRFLOW_PORT) on the demo's runs and root (AIRFLOW_PORT=... for another port)"
	@echo "make bench  run the benchmarks (model quality against baselines, ...)"
	@echo "make shell  a shell with ebr on the PATH and EBR_ROOT on the demo's artifacts (var/demo)"

venv: $(STAMP)

$(STAMP): requirements.lock setup.py $(wildcard */__init__.py)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

test: $(STAMP) chromium wrk
	$(BIN)/python -m pytest

# ruff, configured in pyproject.toml: lint rules, import order and the format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix --select I .
	$(BIN)/ruff format .

# Headless Chromium and its WebDriver (Debian's chromium, chromium-driver) for
# tests/test_browser.py, installed when absent; where they cannot be (no root, no
# package source) the browser test skips and says why.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo -n ) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver' \
	    || echo "chromium/chromium-driver could not be installed: tests/test_browser.py will skip"; }

# wrk (Debian's), the C load generator benchmarks/serving.py saturates the service with
# beside its own (benchmarks/wrk_load.py); installed when absent, else that part is skipped.
wrk:
	@command -v wrk >/dev/null || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo -n ) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk' \
	    || echo "wrk could not be installed: benchmarks/serving.py measures with loadgen.py only"; }

# The whole pipeline through Airflow (`airflow dags test` of ebr_train, ebr_user_embeddings
# and ebr_story_index, twice, on a fresh world, logical dates inside it), its progress as it
# runs, then the retrieval service answering a few users and the next steps to paste; see
# orchestration/demo.py. DEMO_SIZE=tiny|small|medium|large. Airflow home: $(DEMO_ROOT)-airflow.
# DEMO_SHARDS=2: every index published as a 2-shard set, queried through `ebr route` over
# two `ebr serve --shard I/2` (the sharded tier) instead of one `ebr serve`.
demo: $(STAMP)
	$(BIN)/python -m orchestration.demo --root $(DEMO_ROOT) --size $(DEMO_SIZE) --shards $(DEMO_SHARDS)

# Airflow on http://127.0.0.1:$(AIRFLOW_PORT): api-server, scheduler and dag-processor, SQLite,
# this project's dags/, no examples; it prints how to log in. By default it opens the demo's
# Airflow home ($(DEMO_ROOT)-airflow: the demo's runs) with the demo's settings and root;
# AIRFLOW_DIR=/abs/home opens another home, whose DAGs use the configured root
# (EBR_ROOT / EBR_CONFIG). Ctrl-C stops it.
airflow: $(STAMP)
	$(BIN)/python -m orchestration.local_airflow $(if $(AIRFLOW_DIR),--home $(AIRFLOW_DIR),--demo-root $(DEMO_ROOT)) --port $(AIRFLOW_PORT)

# Benchmarks print a Markdown table and write JSON under benchmarks/results/.
bench: $(STAMP) wrk
	$(BIN)/python benchmarks/run_all.py

# A dask.distributed cluster on 127.0.0.1: a scheduler on $(DASK_PORT) and $(DASK_WORKERS)
# worker processes, until Ctrl-C. The embedding jobs run on it with
# `--runner=beam_jobs.dask_runner.DaskRunner --dask_client_address=tcp://127.0.0.1:$(DASK_PORT)`
# (or embed.runner / embed.dask_address); a real cluster takes the same flags.
DASK_PORT ?= 8786
DASK_WORKERS ?= 2
.PHONY: dask
dask: $(STAMP)
	$(BIN)/python -m beam_jobs.dask_cluster --port $(DASK_PORT) --workers $(DASK_WORKERS)

# Airflow with CeleryExecutor on http://127.0.0.1:$(AIRFLOW_PORT): PostgreSQL (metadata and
# Celery results) and Redis (the broker) from Debian, installed when absent, then the
# api-server, scheduler, dag-processor and a Celery worker; home var/airflow-celery.
# The DAGs use the configured root (EBR_ROOT / EBR_CONFIG). Ctrl-C stops everything.
CELERY_POSTGRES_PORT ?= 5432
CELERY_REDIS_PORT ?= 6379
.PHONY: airflow-celery
airflow-celery: $(STAMP)
	$(BIN)/python -m orchestration.celery_airflow --home $(CURDIR)/var/airflow-celery --port $(AIRFLOW_PORT) \
	  --postgres-port $(CELERY_POSTGRES_PORT) --redis-port $(CELERY_REDIS_PORT)

clean-demo:
	rm -rf var/demo

# A shell with .venv's `ebr` (and python, airflow) on the PATH, TF_USE_LEGACY_KERAS=1
# (exported above) and EBR_ROOT on what `make demo` wrote unless EBR_ROOT is set already,
# so `ebr artifacts list`, `ebr serve`, `ebr query user u1` work on the demo's artifacts.
# `exit` leaves it. Without it: `.venv/bin/ebr --root file://$PWD/var/demo ...`.
.PHONY: shell
shell: $(STAMP)
	@echo "ebr is on the PATH, EBR_ROOT=$${EBR_ROOT:-$(DEMO_ROOT)}; try 'ebr artifacts list'; 'exit' leaves this shell"
	@PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" EBR_ROOT="$${EBR_ROOT:-$(DEMO_ROOT)}" $${SHELL:-/bin/bash} -i

# Redis on 127.0.0.1:$(REDIS_PORT), in the foreground, nothing written to disk: the
# router's user profile store (router.user_store = "redis"; `ebr profiles load` fills it).
# Debian's redis-server: apt-get install -y redis-server.
REDIS_PORT ?= 6379
.PHONY: redis
redis:
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no
