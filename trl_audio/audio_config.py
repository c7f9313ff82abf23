"""The configuration fields every audio trainer shares, as dataclass mixins placed before TRL's config class:
`AudioDataConfig` (bad audio, too-long rows, pre-emption: every trainer), `AudioRolloutConfig` (sampling with audio:
encode-once, shared prefill, vLLM server, pre-emption: online DPO, GRPO) and `AutoBf16Config` (bf16 where the GPU has
it: SFT, GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.utils import is_torch_bf16_gpu_available

from .skips import ON_ERROR_CHOICES


@dataclass
class AudioDataConfig:
    r"""
    How an audio trainer meets rows it cannot use, and a pre-emption signal. Mixed into every audio trainer's config
    (before TRL's config class).

    Parameters:
        on_too_long (`str`, *optional*, defaults to `"skip"`):
            What to do with a row longer than `max_length` (its prompt, audio placeholder tokens included, plus the
            tokens reserved for its completion: `max_new_tokens` / `max_completion_length` when sampling, the
            transcript in SFT): `"skip"` leaves it out of the step with a warning and counts it in
            `data/skipped/prompt_too_long`; `"raise"` stops with an error naming the row. Rows are never truncated.
        on_error (`str`, *optional*, defaults to `"skip"`):
            What to do with a row whose audio cannot be loaded (missing, unreadable, empty): `"skip"` leaves it out
            with a warning and counts it in `data/skipped/<reason>`; `"raise"` stops with an error naming the file.
        max_audio_seconds (`float` or `None`, *optional*, defaults to `None`):
            Audio longer than this is treated as a bad row (see `on_error`). `None` accepts any length.
        save_on_preemption (`bool`, *optional*, defaults to `True`):
            On SIGTERM or SIGINT during training, finish the current step, save a checkpoint and stop (exit code 0);
            see `trl_audio.preemption`. Resume with `resume_from_checkpoint`.
    """

    on_too_long: str = field(
        default="skip",
        metadata={
            "help": "What to do with a row whose prompt (audio placeholders included) plus the tokens reserved for "
            "its completion exceeds `max_length`: 'skip' leaves it out of the step with a warning and counts it in "
            "`data/skipped/prompt_too_long`; 'raise' stops with an error. Rows are never truncated.",
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
    save_on_preemption: bool = field(
        default=True,
        metadata={"help": "On SIGTERM or SIGINT, finish the current step, save a checkpoint and stop (exit code 0)."},
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("on_too_long", "on_error"):
            if getattr(self, name) not in ON_ERROR_CHOICES:
                raise ValueError(f"{name} must be one of {ON_ERROR_CHOICES}, got {getattr(self, name)!r}.")
        if self.max_audio_seconds is not None and self.max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds must be positive or None, got {self.max_audio_seconds}.")


@dataclass
class AudioEmbeddingsConfig:
    r"""
    Whether an audio trainer encodes each clip once per step. Mixed into `AudioRolloutConfig` and `AudioDPOConfig`.

    Parameters:
        reuse_audio_embeddings (`bool`, *optional*, defaults to `True`):
            Encode each clip once per step (per generation batch in GRPO) and reuse its embeddings for the samples'
            generation (or both sides of a pair, offline) and the policy and reference passes, while the modules that
            produce them (audio encoder, projector) are frozen (checked each step; when they train, every pass encodes
            the clips as before). The
            reference reuses the policy's embeddings unless a PEFT adapter sits on the audio path, and a separate
            `ref_model` encodes them once itself. Clips are encoded in eval mode, so deterministically.
    """

    reuse_audio_embeddings: bool = field(
        default=True,
        metadata={
            "help": "Encode each clip once per step and reuse its embeddings for generation and the policy and "
            "reference passes, while the audio encoder and projector are frozen (checked each step)."
        },
    )


@dataclass
class AudioRolloutConfig(AudioEmbeddingsConfig, AudioDataConfig):
    r"""
    How an audio trainer samples completions: every field of `AudioDataConfig` and `AudioEmbeddingsConfig`
    (`reuse_audio_embeddings`), plus the ones below. Mixed into
    `AudioOnlineDPOConfig` and `AudioGRPOConfig` (before TRL's config class).

    Parameters:
    > vLLM generation (`use_vllm=True`, `vllm_mode="server"`, `vllm_server_base_url`: TRL's fields; see
    > `scripts/vllm_server.sh`)

        vllm_mode (`str`, *optional*, defaults to `"server"`):
            How vLLM runs when `use_vllm` is on: only `"server"` (TRL's default, `"colocate"`, is not supported: vLLM
            lives in its own environment).
        vllm_sync_steps (`int`, *optional*, defaults to `1`):
            Push the policy's weights (any LoRA merged into a copy) to the vLLM server every this many optimizer
            steps; between pushes the server samples from the weights of the last push.
        vllm_weights_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder, readable by the vLLM server, into which the weights are written for each push. `None`: a new
            folder under `/dev/shm` (the server must then run on the same machine).

    > Speed (each switch changes only the time a step takes, not its results; turn one off to check that)

        generate_with_cache (`bool`, *optional*, defaults to `True`):
            Generate with the KV cache even when `gradient_checkpointing` is on (checkpointing only serves the
            training forward; TRL then generates without the cache, re-running the whole prompt, audio encoder
            included, for every new token).
        share_prompt_prefill (`bool`, *optional*, defaults to `True`):
            Run each prompt through the model once before generation and let its samples continue from that KV cache,
            instead of prefilling one copy of the prompt per sample (with the cache only).
    """

    vllm_mode: str = field(
        default="server",
        metadata={
            "help": "How vLLM runs when use_vllm is on: only 'server' (TRL's default, 'colocate', is not supported: "
            "vLLM lives in its own environment)."
        },
    )
    vllm_sync_steps: int = field(
        default=1,
        metadata={
            "help": "Push the policy's weights (any LoRA merged into a copy) to the vLLM server every this many "
            "optimizer steps."
        },
    )
    vllm_weights_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder, readable by the vLLM server, into which the weights are written for each push. None: a "
            "new folder under /dev/shm (the server must then run on the same machine)."
        },
    )
    generate_with_cache: bool = field(
        default=True,
        metadata={
            "help": "Generate with the KV cache even when gradient_checkpointing is on (TRL then generates without "
            "it, re-running the whole prompt, audio encoder included, for every new token)."
        },
    )
    share_prompt_prefill: bool = field(
        default=True,
        metadata={
            "help": "Prefill each prompt once and let its samples continue from that KV cache, instead of "
            "prefilling one copy of the prompt per sample."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # Batches carry Python lists (prompts, waveforms), which accelerate cannot broadcast from the main process:
        # with an IterableDataset every process reads its own batches instead of having them dispatched.
        if self.accelerator_config.dispatch_batches is None:
            self.accelerator_config.dispatch_batches = False
        if self.use_vllm and self.vllm_mode != "server":
            raise ValueError(
                f"vllm_mode={self.vllm_mode!r} is not supported: vLLM runs in its own environment, as a server "
                "(vllm_mode='server', started with scripts/vllm_server.sh serve MODEL)."
            )
        if self.vllm_sync_steps < 1:
            raise ValueError(f"vllm_sync_steps must be at least 1, got {self.vllm_sync_steps}.")


@dataclass
class AutoBf16Config:
    r"""
    bf16 where the machine has it, so that a CPU run needs no flag. Mixed into `AudioSFTConfig` and `AudioGRPOConfig`
    (before TRL's config class).

    Parameters:
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            Whether to train in bf16 mixed precision. `None` turns it on where a GPU supports bf16 (and `fp16` is
            off), and off elsewhere (TRL: on unless `fp16`, which fails on a CPU).
    """

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to train in bf16 mixed precision. None turns it on where a GPU supports bf16 (and fp16 "
            "is off), and off elsewhere (TRL: on unless fp16, which fails on a CPU)."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and is_torch_bf16_gpu_available()
        super().__post_init__()
