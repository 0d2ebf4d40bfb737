# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= openai/clip-vit-base-patch16
DATA ?= ../shared/data/har/sample
STRATEGY ?= linear-probe
OUT ?= outputs/demo
PYTEST_ARGS ?=
WORKERS ?= auto

.PHONY: install demo demo-train test lint typecheck imports unit bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

# zero-shot bundle + predictions, then import -> validate -> split -> train a head
# (DATA: labels.csv + images/, or class sub-folders; an unlabelled folder stops after the
# predictions); the run is tracked in $(OUT)/mlruns.db
demo: install
	@test -e "$(DATA)" || { echo "DATA=$(DATA) does not exist: pass DATA=<image folder>"; exit 2; }
	$(BIN)/clip-har bundle create --model $(MODEL) -o $(OUT)/bundle --force
	$(BIN)/clip-har predict "$(DATA)" --bundle $(OUT)/bundle -o $(OUT)/predictions.csv --force
	$(BIN)/clip-har data import "$(DATA)" -o $(OUT)/data/imported --force
	@labelled=$$($(BIN)/clip-har data has-labels $(OUT)/data/imported) || exit 1; \
	if [ "$$labelled" = yes ]; then \
		$(MAKE) --no-print-directory demo-train; \
	else \
		echo "$(DATA) has no labels: predictions are in $(OUT)/predictions.csv; training needs labels (labels.csv or one sub-folder per class)"; \
	fi

demo-train: install
	$(BIN)/clip-har data validate $(OUT)/data/imported -o $(OUT)/data/validated --force
	$(BIN)/clip-har data split $(OUT)/data/validated -o $(OUT)/data/split --force
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlruns.db $(BIN)/clip-har train \
		-d $(OUT)/data/split -o $(OUT)/trained --model $(MODEL) --strategy $(STRATEGY) --force

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy src

# the layer contract and the no-cycles contract of pyproject.toml [tool.importlinter]
imports: install
	$(BIN)/lint-imports

test: lint typecheck imports
	$(BIN)/python -m pytest -n $(WORKERS) $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_export_ceiling.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
