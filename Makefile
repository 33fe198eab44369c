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
AIRFLOW_DIR := $(CURDIR)/var/airflow
AIRFLOW_PORT ?= 8080

.PHONY: venv test demo airflow bench clean-demo help

help:
	@echo "make demo   build the environment if needed, then run the pipeline on a synthetic world"
	@echo "make test   build the environment if needed, then run the test suite"
	@echo "make airflow  start Airflow on http://127.0.0.1:8080 with the project's DAGs"
	@echo "make bench  run the benchmarks (model quality against baselines, ...)"

venv: $(STAMP)

$(STAMP): requirements.lock setup.py $(wildcard */__init__.py)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

# The whole pipeline through Airflow (`airflow dags test` of ebr_train, ebr_user_embeddings
# and ebr_story_index on a fresh world, logical dates inside it), then the retrieval
# service answering a few users; see orchestration/demo.py. Airflow home: $(DEMO_ROOT)-airflow.
demo: $(STAMP)
	$(BIN)/python -m orchestration.demo --root $(DEMO_ROOT) --size $(DEMO_SIZE)

# Airflow on http://127.0.0.1:$(AIRFLOW_PORT): api-server, scheduler and dag-processor, SQLite,
# logs and the admin password under var/airflow, this project's dags/, no examples; it prints
# how to log in. The DAGs use the configured artifact root (EBR_ROOT / EBR_CONFIG):
# `EBR_ROOT=file://$(CURDIR)/var/demo make airflow` shows the demo's. Ctrl-C stops it.
airflow: $(STAMP)
	$(BIN)/python -m orchestration.local_airflow --home $(AIRFLOW_DIR) --port $(AIRFLOW_PORT)

# Benchmarks print a Markdown table and write JSON under benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-demo:
	rm -rf var/demo
