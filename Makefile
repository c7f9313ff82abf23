# Two entry points: `make demo` runs the main job on bundled data, `make test` runs the test suite.
# Both create .venv and install the project into it first, if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/scripts/demo_phi4_multimodal_dpo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

lint: $(STAMP)
	$(PY) -m ruff check trl_audio tests examples benchmarks
	$(PY) -m ruff format --check trl_audio tests examples benchmarks

clean:
	rm -rf $(VENV)
