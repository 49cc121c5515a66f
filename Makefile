# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev lint format test test-all demo bench clean

# The package and its server: what the demo, the chat and the server need. The extras only the tests, DeepSpeed and
# lm-eval use come with install-dev, so a first `make demo` does not wait for them (about 30 s of pip).
install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[serve]"
	touch $(STAMP)

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[dev,deepspeed,eval,serve]"
	touch $(DEV_STAMP)

# ruff's lint and its formatter in check mode (settings in pyproject.toml); `make format` rewrites in place.
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# One BLAS thread per process: the tests' tiny models run fastest that way, and the distributed tests start two.
# Two pytest-xdist workers, one a core. `make test ARGS=-n0` runs everything in one process.
XDIST := -n 2
test: install-dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests $(XDIST) $(ARGS)

# The export extra compiles llama.cpp (not part of `install`, so CI never does); the unpacked sdist in .venv/src
# holds llama.cpp's GGUF converter, which modeling_miniminds.export.convert to-gguf finds there.
LLAMA_SDIST := $(VENV)/src
EXPORT_STAMP := $(VENV)/.export-installed

$(EXPORT_STAMP): $(DEV_STAMP)
	mkdir -p $(LLAMA_SDIST)
	$(PY) -m pip download --no-deps --no-binary :all: -d $(LLAMA_SDIST) "llama-cpp-python>=0.3.36"
	tar xzf $$(ls -t $(LLAMA_SDIST)/llama_cpp_python-*.tar.gz | head -1) -C $(LLAMA_SDIST)
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install $$(ls -t $(LLAMA_SDIST)/llama_cpp_python-*.tar.gz | head -1) -e ".[export]"
	touch $(EXPORT_STAMP)

# Everything, slow tests included (the GGUF export against llama.cpp).
test-all: $(EXPORT_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests --slow $(XDIST) $(ARGS)

demo: install
	$(PY) -m recipes.demo --output_dir runs/demo

bench: install-dev
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/pretrain_throughput.py --model minimind-26m --threads 1
	$(PY) benchmarks/data_pipeline.py --mb 50
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/sft_throughput.py
	$(PY) benchmarks/rollout.py

clean:
	rm -rf runs .pytest_cache
