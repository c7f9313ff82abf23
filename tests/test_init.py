"""The package's top level: what it exports, and that importing it prints nothing a user cannot act on."""

import subprocess
import sys

import trl_audio


def test_top_level_exports_the_trainers_and_their_configs():
    assert set(trl_audio.__all__) == {
        "AudioOnlineDPOConfig", "AudioOnlineDPOTrainer", "AudioGRPOConfig", "AudioGRPOTrainer", "AudioDPOConfig",
        "AudioDPOTrainer", "AudioSFTConfig", "AudioSFTTrainer", "__version__",
    }  # fmt: skip
    assert all(getattr(trl_audio, name) is not None for name in trl_audio.__all__)


def test_importing_prints_no_warning():
    # bitsandbytes (the quantization extra) warns on import when it cannot fetch a hub kernel: silenced in __init__
    result = subprocess.run([sys.executable, "-c", "import trl_audio"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
