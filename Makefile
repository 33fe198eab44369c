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

.PHONY: venv test demo bench clean-demo help

help:
	@echo "make demo   build the environment if needed, then run the pipeline on a synthetic world"
	@echo "make test   build the environment if needed, then run the test suite"
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

demo: $(STAMP)
	$(BIN)/ebr --root $(DEMO_ROOT) data generate --size $(DEMO_SIZE) --overwrite
	$(BIN)/ebr --root $(DEMO_ROOT) data show
	$(BIN)/ebr --root $(DEMO_ROOT) artifacts list

# Benchmarks print a Markdown table and write JSON under benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-demo:
	rm -rf var/demo
