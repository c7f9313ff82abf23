"""Configuration of `AudioOnlineDPOTrainer`: TRL's `OnlineDPOConfig` plus what audio prompts and N samples need."""

from dataclasses import dataclass, field

from trl.experimental.online_dpo import OnlineDPOConfig

from .audio_config import AudioRolloutConfig


@dataclass
class AudioOnlineDPOConfig(AudioRolloutConfig, OnlineDPOConfig):
    r"""
    Configuration class for [`AudioOnlineDPOTrainer`]: every field of TRL's `OnlineDPOConfig` and of
    `AudioRolloutConfig` (the audio fields), plus the ones below.

    Parameters:
        num_generations (`int`, *optional*, defaults to `2`):
            Number of completions sampled per prompt, in one batched `generate` call. The DPO pair is the best vs the
            worst completion by reward (or by wins under a pairwise judge). Must be at least 2.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum number of tokens of prompt (audio placeholder tokens included) plus completion. Unlike TRL, a
            prompt is never truncated: a row whose prompt plus `max_new_tokens` would not fit is handled as
            `on_too_long` says.
        log_completions (`bool`, *optional*, defaults to `False`):
            Every `logging_steps`, log the last step's prompts with their samples: one JSON object per prompt (its
            id, prompt text, reference, and each sample's text, score, per-function rewards and role in the pair)
            appended to `<output_dir>/completions.jsonl`, and the same as a table to wandb and as text to tensorboard
            when they are in `report_to`. Main process only.
        rpo_alpha (`float` or `None`, *optional*, defaults to `None`):
            Weight of a negative log-likelihood term on each pair's chosen sample (mean over its tokens), added to the
            DPO loss (RPO, Pang et al. 2024; TRL's `DPOConfig.rpo_alpha`). `None`: DPO alone.
        forward_pairs_only (`bool`, *optional*, defaults to `True`):
            Rank the samples first, then run the policy and reference passes on each prompt's chosen and rejected
            samples only (2 of `num_generations`): the loss is the same. `objective/kl` and `objective/entropy` are
            then averaged over those samples, not over all of them.

    The audio fields (`on_too_long`, `on_error`, `max_audio_seconds`, `save_on_preemption`, `vllm_mode`,
    `vllm_sync_steps`, `vllm_weights_dir`, `generate_with_cache`, `reuse_audio_embeddings`, `share_prompt_prefill`)
    are `AudioRolloutConfig`'s, shared with `AudioGRPOConfig`: see there.
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
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "Every logging_steps, log the last step's prompts with their samples, scores and rewards to "
            "<output_dir>/completions.jsonl, and to wandb (a table) and tensorboard (text) when in report_to."
        },
    )
    rpo_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Weight of a negative log-likelihood term on each pair's chosen sample (mean over its tokens), "
            "added to the DPO loss (RPO, Pang et al. 2024; TRL's DPOConfig.rpo_alpha). None: DPO alone."
        },
    )
    forward_pairs_only: bool = field(
        default=True,
        metadata={
            "help": "Run the policy and reference passes on each prompt's chosen and rejected samples only (same "
            "loss); objective/kl and objective/entropy are then averaged over those samples."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 to form a pair, got {self.num_generations}.")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be non-negative or None, got {self.rpo_alpha}.")
