"""trl-audio: online DPO for speech LLMs (audio + text prompts in, text out), built on Hugging Face TRL."""

import os


# We build on trl.experimental.online_dpo knowingly (and pin TRL's minor): its import warning says nothing new.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

__version__ = "0.1.0"

from .config import AudioOnlineDPOConfig  # noqa: E402
from .trainer import AudioOnlineDPOTrainer  # noqa: E402


__all__ = ["AudioOnlineDPOConfig", "AudioOnlineDPOTrainer", "__version__"]
