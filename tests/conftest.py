"""Session-wide fixtures: tiny audio-LLM checkpoints built once per test session (see `trl_audio.testing`)."""

import pytest
import torch

from trl_audio.testing import build_tiny_glm_asr, build_tiny_phi4mm, build_tiny_qwen2_audio


# Tiny models gain nothing from a second thread, and two threads in each of `make test`'s two xdist workers
# oversubscribe a 2-core machine, where OpenMP's spinning threads make each step about 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_phi4mm_dir(tmp_path_factory):
    """A tiny Phi-4-multimodal checkpoint (seed 0) with its `speech-lora/` adapter."""
    return build_tiny_phi4mm(tmp_path_factory.mktemp("tiny_phi4mm"))


@pytest.fixture(scope="session")
def tiny_qwen2_audio_dir(tmp_path_factory):
    """A tiny Qwen2-Audio checkpoint (seed 0)."""
    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny_qwen2_audio"))


@pytest.fixture(scope="session")
def tiny_glm_asr_dir(tmp_path_factory):
    """A tiny GLM-ASR checkpoint (seed 0)."""
    return build_tiny_glm_asr(tmp_path_factory.mktemp("tiny_glm_asr"))


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory):
    """The recipe's synthetic corpus (`trl_audio.recipe.CORPUS`) with its first 8 training clips and its whole test
    split (150 clips), each clip as in the whole corpus; skips where espeak-ng is missing."""
    from trl_audio.corpus import find_espeak
    from trl_audio.recipe import ensure_corpus

    try:
        find_espeak()
    except RuntimeError as e:
        pytest.skip(str(e))
    return ensure_corpus(tmp_path_factory.mktemp("recipe") / "corpus", train_rows=8)
