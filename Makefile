# Two entry points: `make demo` runs the main job on bundled data, `make test` runs the test suite.
# Both create .venv and install the project into it first, if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean test-vllm vllm-venv vllm-server

# pip's own output (and the build backend's) goes to $(VENV)/install.log, shown only if the install fails.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing trl-audio and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@($(PY) -m pip install --upgrade pip && $(PY) -m pip install -c constraints.txt -e ".[dev]") \
		> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/scripts/demo_phi4_multimodal_dpo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

# vLLM generation (use_vllm=True): vLLM lives in .venv-vllm (its own torch and transformers); see
# scripts/vllm_server.sh. `make vllm-server MODEL=path/or/hub-id [PORT=8000] [VLLM_ARGS=...]` serves a model for
# training; `make test-vllm` starts its own servers (skipped when .venv-vllm is missing; kept out of `make test`).
MODEL ?=
PORT ?= 8000
VLLM_ARGS ?=

vllm-venv:
	scripts/vllm_server.sh setup

vllm-server:
	scripts/vllm_server.sh serve $(MODEL) --port $(PORT) $(VLLM_ARGS)

test-vllm: $(STAMP)
	TRL_AUDIO_VLLM_TESTS=1 taskset -c 1 $(PY) -m pytest -p no:xdist -p no:cacheprovider --durations=15 tests/vllm_server

lint: $(STAMP)
	$(PY) -m ruff check trl_audio tests examples benchmarks
	$(PY) -m ruff format --check trl_audio tests examples benchmarks

clean:
	rm -rf $(VENV)
