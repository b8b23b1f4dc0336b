# tptlib: test-time prompt tuning of CLIP. `make help` lists the targets.
SHELL := /bin/bash
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
# torch/torchvision pinned to the builds this project is tested with (a CUDA build; runs on CPU too)
TORCH    ?= torch==2.14.1 torchvision==0.29.1

# Tests: one process per core (pytest-xdist); the tests of one file stay in one process, in order
# (`loadfile`: the notebook chain shares one kernel and one run folder), files in the order
# tests/conftest.py gives them (the costly ones first)
TEST_WORKERS    ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Workbook parameters (micro profile by default; see README for the paper profile)
PROFILE    ?= micro
MODEL      ?=
PRETRAINED ?=
DATA_ROOT  ?=
DEVICE     ?=
LIMIT      ?=
REPORTS    ?= reports
NB_PARAMS  := -p profile '"$(PROFILE)"' \
  $(if $(MODEL),-p model '"$(MODEL)"') $(if $(PRETRAINED),-p pretrained '"$(PRETRAINED)"') \
  $(if $(DATA_ROOT),-p data_root '"$(DATA_ROOT)"') $(if $(DEVICE),-p device '"$(DEVICE)"') \
  $(if $(LIMIT),-p limit $(LIMIT))

.PHONY: help env test test-fast reports lab bench bench-gpu precision micro clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: PROFILE=micro|paper MODEL PRETRAINED DATA_ROOT DEVICE LIMIT (reports), BENCH_ARGS (bench)"

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[notebooks,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tptlib)" >/dev/null
	touch $@

env: $(STAMP) ## Create .venv and install the project (done by the other targets when needed)

test: $(STAMP) ## Run the whole test suite: unit tests, the notebooks (papermill), the paper profile end to end
	TQDM_DISABLE=1 $(PY) -m pytest -q $(PYTEST_PARALLEL) --durations=15

test-fast: $(STAMP) ## The tests that start no Jupyter kernel and are not marked slow
	TQDM_DISABLE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not notebooks"

reports: $(STAMP) ## Run the six notebooks with papermill into reports/ (ipynb + HTML, index.html)
	$(PY) -m tptlib.workbook --all --out $(REPORTS) $(NB_PARAMS)

lab: $(STAMP) ## Open JupyterLab on notebooks/ with the project's environment as kernel
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP) ## Engine vs. faithful reference on the CPU (ViT-B-16 shape, 200 classes)
	$(PY) -m tptlib.cli bench $(BENCH_ARGS)

bench-gpu: $(STAMP) ## The GPU benchmark: 200 and 1000 classes on one CUDA device (about 5 minutes)
	bash scripts/bench_gpu.sh

precision: $(STAMP) ## How much bf16 (and amp on CUDA) changes TPT's predictions against fp32 (micro sets)
	bash scripts/precision_check.sh

micro: $(STAMP) ## Retrain the embedded micro-CLIP from scratch (tpt micro build)
	$(PY) -m tptlib.cli micro build

clean: ## Remove reports and run folders (keeps .venv)
	rm -rf $(REPORTS) runs
