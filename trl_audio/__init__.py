"""trl-audio: online DPO, GRPO and offline DPO for speech LLMs (audio + text prompts in, text out), on Hugging Face
TRL."""

import logging
import os


# We build on trl.experimental.online_dpo knowingly (and pin TRL's minor): its import warning says nothing new.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# bitsandbytes >= 0.49 (the quantization extra) fetches a CPU kernel from the Hugging Face Hub when imported on CPUs
# with AVX512-BF16 and warns on every import when it cannot (offline, or without the `kernels` package); its own CPU
# code is used then, which our QLoRA tests run. The warning says nothing a user can act on: keep that logger quiet.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

from .config import AudioOnlineDPOConfig  # noqa: E402
from .dpo import AudioDPOConfig, AudioDPOTrainer  # noqa: E402
from .grpo import AudioGRPOConfig, AudioGRPOTrainer  # noqa: E402
from .sft import AudioSFTConfig, AudioSFTTrainer  # noqa: E402
from .trainer import AudioOnlineDPOTrainer  # noqa: E402


__all__ = [
    "AudioDPOConfig",
    "AudioDPOTrainer",
    "AudioGRPOConfig",
    "AudioGRPOTrainer",
    "AudioOnlineDPOConfig",
    "AudioOnlineDPOTrainer",
    "AudioSFTConfig",
    "AudioSFTTrainer",
    "__version__",
]
