# The README's commands. Each creates .venv on first use (torch 2.14.1 and the pinned tools of requirements/), builds
# the extension pyfast._C (incrementally after the first time) and then runs.
#   make run    the main job: a short weighted-convolution ResNet-18 training on scikit-learn's embedded digits
#               (--overwrite: each make run starts its run directory over)
#   make test   the whole test suite (what CI runs)
#   make bench  every op benchmark at its default sizes (CSV + PNG under bench/results)

VENV ?= .venv
PY := $(VENV)/bin/python
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: setup build run test bench clean

$(VENV)/.installed: requirements/dev.txt requirements/peers.txt pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -r requirements/peers.txt
	PYFAST_SKIP_EXTENSION=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Incremental rebuild of _C (ninja, objects under build/), so edits to csrc/ are always picked up.
build: setup
	$(PY) setup.py -q build_ext --inplace

run: build
	$(PY) -m pyfast info
	$(PY) -m pyfast train --method weighted-conv --model resnet18 --data digits --epochs 3 --overwrite

test: build
	$(PY) -m pytest -q

bench: build
	$(PY) -m pyfast bench

clean:
	rm -rf build runs bench/results pyfast/_C*.so pyfast/_build_info.py
