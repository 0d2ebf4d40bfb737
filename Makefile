# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= openai/clip-vit-base-patch16
DATA ?= ../shared/data/har/sample
STRATEGY ?= linear-probe
OUT ?= outputs/demo
NAME ?= clip-har
PYTEST_ARGS ?=
WORKERS ?= auto

.PHONY: install demo demo-lifecycle test lint typecheck imports unit bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[all,dev]'
	touch $@

# zero-shot bundle + predictions of DATA; then, for labelled DATA, the whole lifecycle in a
# fresh project $(OUT)/project (its own git repository with DVC): `clip-har project init`,
# `dvc repro` (import -> validate -> split -> embed -> train -> evaluate -> export ->
# register, promoted to @production through the gate), a commit of the results (the baseline
# of `dvc exp run`), and `clip-har project summary`. The registry is the project's
# mlruns.db. Everything is written under $(OUT) (git-ignored): this repository stays clean.
# An unlabelled DATA folder stops after the predictions.
demo: install
	@test -e "$(DATA)" || { echo "DATA=$(DATA) does not exist: pass DATA=<image folder>"; exit 2; }
	$(BIN)/clip-har bundle create --model $(MODEL) -o $(OUT)/bundle --force
	$(BIN)/clip-har predict "$(DATA)" --bundle $(OUT)/bundle -o $(OUT)/predictions.csv --force
	$(BIN)/clip-har data import "$(DATA)" -o $(OUT)/data/imported --force
	@labelled=$$($(BIN)/clip-har data has-labels $(OUT)/data/imported) || exit 1; \
	if [ "$$labelled" = yes ]; then \
		$(MAKE) --no-print-directory demo-lifecycle; \
	else \
		echo "$(DATA) has no labels: predictions are in $(OUT)/predictions.csv; training needs labels (labels.csv or one sub-folder per class)"; \
	fi

PROJECT := $(abspath $(OUT))/project
# the venv's clip-har for the stages, the project's own registry, no DVC analytics
IN_PROJECT := cd "$(PROJECT)" && PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 \
	MLFLOW_TRACKING_URI="sqlite:///$(PROJECT)/mlruns.db"
# a commit identity only where git has none configured
GIT_IDENTITY := $$(git config user.name >/dev/null || echo -c user.name=clip-har) \
	$$(git config user.email >/dev/null || echo -c user.email=clip-har@localhost)

demo-lifecycle: install
	$(BIN)/clip-har project init "$(PROJECT)" --data "$(DATA)" --model $(MODEL) \
		--strategy $(STRATEGY) --register $(NAME) --force
	$(IN_PROJECT) "$(abspath $(BIN))/python" -m dvc repro
	$(IN_PROJECT) git add -A && git $(GIT_IDENTITY) commit --quiet -m "dvc repro: the baseline"
	$(IN_PROJECT) "$(abspath $(BIN))/clip-har" project summary .

# the local stack in one command (`clip-har up`, docs/apps.md): the MLflow server, the API and
# the UI; Ctrl-C stops all three. After `make demo`: the demo project's registry and its
# @production version, else (no lifecycle) the zero-shot bundle with a registry of its own.
# State and logs go to $(OUT)/stack. UP_ARGS adds options (UP_ARGS="--api-port 8080").
UP_ARGS ?=
STACK := $(abspath $(OUT))/stack
.PHONY: up
up: install
	@if [ -e "$(PROJECT)/mlruns.db" ]; then set -x; \
		$(BIN)/clip-har up --model $(NAME) --state "$(STACK)" $(UP_ARGS) \
			--backend-store-uri "sqlite:///$(PROJECT)/mlruns.db" \
			--artifacts-destination "$(PROJECT)/mlartifacts"; \
	elif [ -d "$(OUT)/bundle" ]; then set -x; \
		$(BIN)/clip-har up --bundle $(OUT)/bundle --state "$(STACK)" $(UP_ARGS) \
			--backend-store-uri "sqlite:///$(STACK)/mlruns.db" \
			--artifacts-destination "$(STACK)/mlartifacts"; \
	else echo "nothing to serve yet: run 'make demo' first, or 'clip-har up --bundle DIR'"; exit 2; fi

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

.PHONY: bench-serving
bench-serving: install  # real servers on loopback; BentoML gets a venv of its own (cached)
	$(BIN)/python benchmarks/bench_serving.py

.PHONY: bench-predict
bench-predict: install  # clip-har batch vs transformers.pipeline on ../shared/data/har/dev
	$(BIN)/python benchmarks/bench_predict.py

# The real container test: Dockerfile.serve built with buildah on a Debian base made by
# mmdebstrap, its own entrypoint run (`buildah run`, host network) on a tiny ONNX bundle, then
# health, a prediction, no torch inside; figures to benchmarks/results/image.{json,md}
# (deploy/docker/image_test.py). Needs root, buildah, mmdebstrap and network (Debian's mirror
# and PyPI, for pip inside the build). Minutes long: not part of `make test`.
IMAGE_TEST_ARGS ?=
.PHONY: image-test images
image-test: install
	$(BIN)/python deploy/docker/image_test.py $(IMAGE_TEST_ARGS)

# the three images with any Dockerfile builder, e.g. make images BUILDER="docker build";
# BUILD_ARGS adds options (BUILD_ARGS="--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt")
BUILDER ?= buildah --storage-driver vfs bud --format docker
BUILD_ARGS ?=
IMAGE_PREFIX ?= localhost/clip-har
IMAGE_TAG ?= dev
images:
	for image in serve ui train; do \
		$(BUILDER) $(BUILD_ARGS) -f deploy/docker/Dockerfile.$$image \
			-t $(IMAGE_PREFIX)-$$image:$(IMAGE_TAG) \
			--build-arg REVISION=$$(git rev-parse --short HEAD) . || exit 1; \
	done

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache
