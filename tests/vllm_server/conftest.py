"""Real vLLM servers for `make test-vllm`: one per family, started from `.venv-vllm` on 127.0.0.1 (core 0; the tests
run on core 1) with a small checkpoint of `trl_audio.testing` (vLLM's CPU attention has no kernel for the tiny models'
head size of 16).

Collected only with TRL_AUDIO_VLLM_TESTS=1 (`make test-vllm` sets it), so `make test` never starts a server; skipped
when `.venv-vllm` is missing (`make vllm-venv` creates it). (Not named tests/vllm: on `sys.path`, that folder would
pass for the vllm package, and TRL would take vLLM for installed.)"""

import os

import pytest

from trl_audio.testing import build_tiny_glm_asr, build_tiny_qwen2_audio
from trl_audio.vllm_client import VLLM_VENV, LocalVLLMServer


if not os.environ.get("TRL_AUDIO_VLLM_TESTS"):
    collect_ignore_glob = ["test_*.py"]


def serve(tmp_path_factory, build, name):
    if not (VLLM_VENV / "bin/python").exists():
        pytest.skip(f"{VLLM_VENV} is missing: run `make vllm-venv` first.")
    model_dir = build(tmp_path_factory.mktemp(name), size="small")
    return LocalVLLMServer(model_dir, tmp_path_factory.mktemp(f"{name}_log") / "server.log")


@pytest.fixture(scope="session")
def qwen2_audio_server(tmp_path_factory):
    with serve(tmp_path_factory, build_tiny_qwen2_audio, "small_qwen2_audio") as server:
        yield server


@pytest.fixture(scope="session")
def glm_asr_server(tmp_path_factory):
    with serve(tmp_path_factory, build_tiny_glm_asr, "small_glm_asr") as server:
        yield server
