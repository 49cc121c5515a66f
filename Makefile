# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,deepspeed,eval,serve]"
	touch $(STAMP)

# One BLAS thread per process: the tests' tiny models run fastest that way, and the distributed tests start two.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

demo: install
	$(PY) -m recipes.demo --output_dir runs/demo

bench: install
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/pretrain_throughput.py --model minimind-26m --threads 1
	$(PY) benchmarks/data_pipeline.py --mb 50
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
