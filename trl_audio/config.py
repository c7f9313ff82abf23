"""Configuration of `AudioOnlineDPOTrainer`: TRL's `OnlineDPOConfig` plus what audio prompts and N samples need."""

from dataclasses import dataclass, field

from trl.experimental.online_dpo import OnlineDPOConfig

from .skips import ON_ERROR_CHOICES


@dataclass
class AudioOnlineDPOConfig(OnlineDPOConfig):
    r"""
    Configuration class for [`AudioOnlineDPOTrainer`]: every field of TRL's `OnlineDPOConfig`, plus the ones below.

    Parameters:
        num_generations (`int`, *optional*, defaults to `2`):
            Number of completions sampled per prompt, in one batched `generate` call. The DPO pair is the best vs the
            worst completion by reward (or by wins under a pairwise judge). Must be at least 2.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum number of tokens of prompt (audio placeholder tokens included) plus completion. Unlike TRL, a
            prompt is never truncated: a row whose prompt plus `max_new_tokens` would not fit is handled as
            `on_too_long` says.
        on_too_long (`str`, *optional*, defaults to `"skip"`):
            What to do with a row whose prompt plus `max_new_tokens` exceeds `max_length`: `"skip"` leaves it out of
            the step with a warning and counts it in `data/skipped/prompt_too_long`; `"raise"` stops with an error
            naming the row.
        on_error (`str`, *optional*, defaults to `"skip"`):
            What to do with a row whose audio cannot be loaded (missing, unreadable, empty): `"skip"` leaves it out
            with a warning and counts it in `data/skipped/<reason>`; `"raise"` stops with an error naming the file.
        max_audio_seconds (`float` or `None`, *optional*, defaults to `None`):
            Audio longer than this is treated as a bad row (see `on_error`). `None` accepts any length.
    """

    num_generations: int = field(
        default=2,
        metadata={
            "help": "Number of completions sampled per prompt, in one batched `generate` call. The DPO pair is the "
            "best vs the worst completion by reward (or by wins under a pairwise judge). Must be at least 2."
        },
    )
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Maximum number of tokens of prompt (audio placeholder tokens included) plus completion. Unlike "
            "TRL, a prompt is never truncated: a row whose prompt plus `max_new_tokens` would not fit is handled as "
            "`on_too_long` says."
        },
    )
    on_too_long: str = field(
        default="skip",
        metadata={
            "help": "What to do with a row whose prompt plus `max_new_tokens` exceeds `max_length`: 'skip' leaves it "
            "out of the step with a warning and counts it in `data/skipped/prompt_too_long`; 'raise' stops with an "
            "error.",
            "choices": list(ON_ERROR_CHOICES),
        },
    )
    on_error: str = field(
        default="skip",
        metadata={
            "help": "What to do with a row whose audio cannot be loaded (missing, unreadable, empty): 'skip' leaves "
            "it out with a warning and counts it in `data/skipped/<reason>`; 'raise' stops with an error naming the "
            "file.",
            "choices": list(ON_ERROR_CHOICES),
        },
    )
    max_audio_seconds: float | None = field(
        default=None,
        metadata={"help": "Audio longer than this is treated as a bad row (see `on_error`). None accepts any length."},
    )

    def __post_init__(self):
        super().__post_init__()
        # Batches carry Python lists (prompts, waveforms), which accelerate cannot broadcast from the main process:
        # with an IterableDataset every process reads its own batches instead of having them dispatched.
        if self.accelerator_config.dispatch_batches is None:
            self.accelerator_config.dispatch_batches = False
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 to form a pair, got {self.num_generations}.")
        for name in ("on_too_long", "on_error"):
            if getattr(self, name) not in ON_ERROR_CHOICES:
                raise ValueError(f"{name} must be one of {ON_ERROR_CHOICES}, got {getattr(self, name)!r}.")
        if self.max_audio_seconds is not None and self.max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds must be positive or None, got {self.max_audio_seconds}.")
