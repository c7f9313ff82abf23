"""GRPO with audio + text prompts: TRL's `GRPOTrainer` with each row's clip carried through generation and every
log-prob pass, on the shared audio modules (prompt inputs, embeddings read once, generation, vLLM sampler, metrics)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, ProcessorMixin
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from . import generation
from .audio_config import AudioRolloutConfig, AutoBf16Config
from .metrics import training_logs
from .preemption import GivesHandlersBackOnError, PreemptionCallback
from .prompt_embeds import PromptBatch, PromptEncoder
from .prompt_inputs import (
    SKIPPED_KEY,
    AudioPromptCollator,
    audio_rows,
    placeholder_token_ids,
    prepare_prompts,
    processor_sampling_rate,
    without_audio_parts,
)
from .skips import SkipCounter
from .vllm_client import VLLMSampler


@dataclass
class AudioGRPOConfig(AutoBf16Config, AudioRolloutConfig, GRPOConfig):
    r"""
    Configuration class for [`AudioGRPOTrainer`]: every field of TRL's `GRPOConfig`, of `AutoBf16Config` (`bf16`: on
    where a GPU supports it) and of `AudioRolloutConfig` (the audio fields: `on_too_long`, `on_error`,
    `max_audio_seconds`, `save_on_preemption`, `vllm_mode`, `vllm_sync_steps`, `vllm_weights_dir`,
    `generate_with_cache`, `reuse_audio_embeddings`, `share_prompt_prefill`), plus the ones below.

    Parameters:
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum number of tokens of prompt (audio placeholder tokens included) plus `max_completion_length`. A
            prompt is never truncated: a row that would not fit is handled as `on_too_long` says. `None`: no limit.
    """

    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Maximum number of tokens of prompt (audio placeholder tokens included) plus "
            "max_completion_length. A prompt is never truncated: a row that would not fit is handled as on_too_long "
            "says. None: no limit."
        },
    )


@dataclass
class Rollout:
    """One generation batch's prompts: the unique prompts as the model takes them (`batch`, for the policy, and
    `reference`, for a separate reference model; None when no prompt is left), their columns (`inputs`), and for each
    local sample the prompt it continues (`rows[k]`, or -1 for a row left out: bad audio, too long)."""

    batch: PromptBatch | None
    reference: PromptBatch | None
    inputs: dict[str, list]
    rows: list[int]


def _prompt_key(row: dict) -> str:
    """What makes two rows the same prompt: its messages and its clip (a path, or the samples' digest)."""
    audio = row.get("audio")
    if isinstance(audio, dict) and audio.get("array") is not None:
        digest = hashlib.sha1(np.ascontiguousarray(audio["array"]).tobytes()).hexdigest()
        audio = f"{audio.get('sampling_rate')}:{digest}"
    elif isinstance(audio, dict):
        audio = audio.get("path")
    return json.dumps([row["prompt"], audio], sort_keys=True, default=str)


class AudioGRPOTrainer(GivesHandlersBackOnError, GRPOTrainer):
    """GRPO for models that take audio + text prompts (Phi-4-multimodal, Qwen2-Audio, GLM-ASR, ...).

    Takes the same arguments as TRL's `GRPOTrainer` (`model` loaded, with its processor as `processing_class`:
    `init_model` gives both), plus `skip_counter`: the `SkipCounter` in which rows left out are counted (bad audio,
    prompts too long for `max_length`), logged as `data/skipped/<reason>`; pass the one given to
    `create_audio_dataset` to log the dataset's skips too.

    A training row has `prompt` (conversational messages whose user content includes `{"type": "audio"}`, or text),
    `audio` (a path or `{"array", "sampling_rate"}`; absent or None for text-only rows) and any other columns (`text`,
    `keywords`, ...), which reach the reward functions unchanged. Each unique prompt of a generation batch goes
    through the processor once with its clip; its outputs travel as one dict (or as the audio embeddings read once,
    while the audio path is frozen) through generation, in which the prompt is prefilled once for its samples, and
    through every log-prob pass (old policy, reference, policy), whatever the model family. Each sample keeps the
    index of its prompt (`rollout_rows`) when TRL shuffles and splits the generation batch, so `steps_per_generation`,
    `num_iterations` and gradient accumulation read the right clip. A row left out (bad audio, too long) stays in the
    batch with a masked one-token completion and no reward, so its advantage is 0 and its group's baseline ignores it.
    """

    _tag_names = ["trl", "grpo", "trl-audio"]

    def __init__(
        self,
        model: PreTrainedModel,
        reward_funcs: Any,
        args: AudioGRPOConfig | None = None,
        processing_class: Any = None,
        skip_counter: SkipCounter | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("`args` must be an AudioGRPOConfig.")
        if isinstance(model, str):
            raise ValueError("Pass a loaded model and its processor (`trl_audio.audio_utils.init_model`).")
        # What TRL's GRPO offers beyond one sampled answer per prompt does not carry the audio (yet): refused here,
        # not dropped silently.
        given = [name for name in ("tools", "rollout_func", "environment_factory") if kwargs.get(name) is not None]
        if args.use_transformers_continuous_batching:
            given.append("use_transformers_continuous_batching=True")
        if given:
            raise ValueError(
                f"AudioGRPOTrainer does not support {given}: the audio prompts go through trl_audio's own generation "
                "(trl_audio.generation) and vLLM sampler, one answer per sample, without tool calls."
            )
        # TRL suppresses `config.image_token_id` in generation for any processor, and audio LLMs have none: it reads
        # our audio placeholder instead (set back below). TRL's vLLM setup imports vllm and speaks NCCL to the server;
        # ours samples over HTTP (`VLLMSampler`), so TRL sets up HF generation.
        placeholders = placeholder_token_ids(processing_class)
        lent_image_token = isinstance(processing_class, ProcessorMixin) and not hasattr(model.config, "image_token_id")
        if lent_image_token:
            model.config.image_token_id = placeholders[0]
        use_vllm, args.use_vllm = args.use_vllm, False
        try:
            super().__init__(
                model=model, reward_funcs=reward_funcs, args=args, processing_class=processing_class, **kwargs
            )
        finally:
            args.use_vllm = use_vllm
            if lent_image_token:
                del model.config.image_token_id
        self.vllm_sampler = VLLMSampler(self.model, processing_class, self.accelerator, args) if use_vllm else None
        if placeholders:  # a sampled placeholder would make the model look for features that are not there
            self.generation_kwargs["suppress_tokens"] = placeholders
            self.generation_config.suppress_tokens = placeholders
        if args.generate_with_cache:  # TRL turns the cache off under gradient checkpointing, which generation skips
            self.generation_kwargs["use_cache"] = True
            self.generation_config.use_cache = True
        self.audio_loader = AudioPromptCollator(
            processor_sampling_rate(processing_class), args.on_error, args.max_audio_seconds
        )
        self.prompt_encoder = PromptEncoder(self.accelerator, placeholders, args.reuse_audio_embeddings)
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.preemption = PreemptionCallback() if args.save_on_preemption else None
        if self.preemption is not None:
            self.add_callback(self.preemption)
        self._rollouts: dict[str, Rollout] = {}
        self._forward_rows: torch.Tensor | None = None  # the prompt of each row of the next log-prob passes

    def _start_rollout(self, inputs: list[dict]) -> Rollout:
        """Reads the generation batch's unique prompts once: their clips decoded (bad audio skipped and counted, or
        raising, as `on_error` says), rendered and processed together (too-long prompts skipped and counted, or
        raising), and their audio embeddings read once where they can be reused."""
        keys = [_prompt_key(row) for row in inputs]
        first = {key: index for index, key in reversed(list(enumerate(keys)))}
        unique = sorted(first.values())
        loaded = []  # (index into `unique`, the row with its waveform)
        for position, index in enumerate(unique):
            batch = self.audio_loader([inputs[index]])
            self.skip_counter.update(batch.pop(SKIPPED_KEY))
            if batch["prompt"]:
                loaded.append((position, {key: values[0] for key, values in batch.items()}))
        columns = {key: [row[key] for _, row in loaded] for key in inputs[0]}
        columns["_unique"] = [position for position, _ in loaded]
        if not loaded:
            return Rollout(None, None, columns, [-1] * len(inputs))
        args = self.args
        kept, prompt_inputs = prepare_prompts(
            self.processing_class, columns, args.max_length, args.max_completion_length, "max_completion_length",
            args.on_too_long, self.skip_counter,
        )  # fmt: skip
        if not prompt_inputs:
            return Rollout(None, None, kept, [-1] * len(inputs))
        batch = self.prompt_encoder.policy_batch(self.model, prompt_inputs, audio_rows(kept.get("audio")))
        reference = None
        if self.beta != 0.0 and self.ref_model is not None:
            reference = self.prompt_encoder.reference_batch(batch, self.model, self.ref_model)
        elif self.beta != 0.0:  # the reference is the policy's own call, with its adapter off
            batch = self.prompt_encoder.shared_with_adapter_off(batch, self.model)
        prompt_of = {keys[unique[position]]: row for row, position in enumerate(kept["_unique"])}
        return Rollout(batch, reference, kept, [prompt_of.get(key, -1) for key in keys])

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict[str, torch.Tensor | Any]:
        # Same as GRPOTrainer._generate_and_score_completions, except that:
        # - the generation batch's unique prompts are read once with their clips (`_start_rollout`), and the prompt
        #   ids, generation and every log-prob pass come from them (`_tokenize_prompts`, `_generate_single_turn`,
        #   `_get_per_token_logps_and_entropies`);
        # - a row left out (bad audio, too long) keeps its place with a one-token completion that is masked out of the
        #   loss and of `num_items_in_batch`, and no reward (`_calculate_rewards`);
        # - the output carries `rollout_rows` (each sample's prompt), shuffled and split with the samples.
        mode = "train" if self.model.training else "eval"
        rollout = self._start_rollout(inputs)
        self._rollouts[mode] = rollout
        device = self.accelerator.device
        self._forward_rows = torch.tensor(rollout.rows, device=device)
        output = super()._generate_and_score_completions(inputs)
        left_out = self._forward_rows < 0
        if left_out.any() or self.accelerator.num_processes > 1:
            output["completion_mask"] = output["completion_mask"] * (~left_out).unsqueeze(1).int()
            output["num_items_in_batch"] = output["num_items_in_batch"] - self.accelerator.gather(left_out.sum()).sum()
        output["rollout_rows"] = self._forward_rows
        return output

    def _tokenize_prompts(self, prompts: list):
        # Same as GRPOTrainer._tokenize_prompts, except that the prompt ids are those the processor gave with the
        # clips (`_start_rollout`; a row left out gets a one-token stand-in), and there are no images to extract.
        rollout = self._rollouts["train" if self.model.training else "eval"]
        pad = self._tokenizer.pad_token_id
        if rollout.batch is None:
            return [[pad] for _ in rollout.rows], None, {}
        ids, mask = rollout.batch.inputs["input_ids"], rollout.batch.inputs["attention_mask"]
        return [ids[r][mask[r].bool()].tolist() if r >= 0 else [pad] for r in rollout.rows], None, {}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        # Same as GRPOTrainer._generate_single_turn, except that the samples continue the rollout's prompts with
        # their audio (`generation.sample`: each prompt prefilled once for its samples, `share_prompt_prefill`; the KV
        # cache on even under gradient checkpointing, `generate_with_cache`), or come from `VLLMSampler` (weights
        # pushed every `vllm_sync_steps`, no sampling log-probs, so no importance-sampling correction); a row left
        # out gets the end token as its completion; and transformers' continuous batching is not offered.
        rollout = self._rollouts["train" if self.model.training else "eval"]
        rows = [r for r in rollout.rows if r >= 0]
        samples: list[list[int]] = []
        if rows:
            pad = self._tokenizer.pad_token_id
            if self.vllm_sampler is not None:
                self.vllm_sampler.sync(self.model, self.state.global_step)
                completion_ids, completion_mask = self.vllm_sampler.sample(
                    rollout.batch, rollout.inputs, rows, self.max_completion_length, self.eos_token_ids, pad,
                    temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                    repetition_penalty=self.repetition_penalty,
                )  # fmt: skip
            else:
                with (
                    unwrap_model_for_generation(
                        self.model_wrapped,
                        self.accelerator,
                        gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                        generation_kwargs=self.generation_kwargs,
                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                    ) as unwrapped_model,
                    torch.no_grad(),
                    self._dist.summon_full_params(self.model_wrapped, recurse=False),
                ):
                    completion_ids, completion_mask = generation.sample(
                        unwrapped_model, rollout.batch, rows, self.generation_config, self.eos_token_ids, pad,
                        share_prefill=self.args.share_prompt_prefill and self.args.cache_implementation is None,
                    )  # fmt: skip
            samples = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids.cpu(), completion_mask.cpu())]
        sampled = iter(samples)
        return [next(sampled) if r >= 0 else [self.eos_token_ids[0]] for r in rollout.rows], None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        # Same as GRPOTrainer._get_per_token_logps_and_entropies, except that the audio reaches the model through the
        # rollout's `PromptBatch` (row k of `input_ids` continues prompt `self._forward_rows[k]`: the processor's
        # outputs, or the audio embeddings read once), not through image keys; rows left out get zeros without a
        # pass (a chunk with none left runs a one-token stand-in pass, so that every process takes part in DDP's
        # collectives).
        rollout = self._rollouts["train" if self.model.training else "eval"]
        prompts = rollout.reference if model is self.ref_model and rollout.reference is not None else rollout.batch
        rows = self._forward_rows
        batch_size = batch_size or input_ids.size(0)
        unwrapped = self.accelerator.unwrap_model(model)
        logps, entropies, aux_losses = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            chunk = rows[start : start + batch_size]
            kept = (chunk >= 0).nonzero().flatten()
            shape = (len(chunk), logits_to_keep)
            if len(kept) == 0:
                stand_in = torch.full((1, 1), self._tokenizer.pad_token_id, device=input_ids.device)
                zero = model(input_ids=stand_in, attention_mask=torch.ones_like(stand_in)).logits.sum() * 0.0
                logps.append(input_ids.new_zeros(shape, dtype=torch.float32) + zero)
                entropies.append(input_ids.new_zeros(shape, dtype=torch.float32))
                continue
            ids, mask = input_ids[start : start + batch_size][kept], attention_mask[start : start + batch_size][kept]
            model_inputs = prompts.model_inputs(unwrapped, chunk[kept].tolist(), ids, mask)
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            chunk_logps = outputs.log_probs[:, -logits_to_keep:]
            chunk_entropy = outputs.entropy[:, -logits_to_keep:] if compute_entropy else None
            if len(kept) < len(chunk):
                chunk_logps = chunk_logps.new_zeros(shape).index_copy(0, kept, chunk_logps)
                if chunk_entropy is not None:
                    chunk_entropy = chunk_entropy.new_zeros(shape).index_copy(0, kept, chunk_entropy)
            logps.append(chunk_logps)
            entropies.append(chunk_entropy)
            if compute_aux_loss:
                aux_losses.append(outputs.aux_loss)
        entropy = torch.cat(entropies) if compute_entropy else None
        aux_loss = torch.stack(aux_losses).mean() if aux_losses else None
        return torch.cat(logps), entropy, aux_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Same as GRPOTrainer.compute_loss, except that the policy pass reads each sample's own prompt and clip: the
        # batch's `rollout_rows`, shuffled and split with its samples, tell which.
        self._forward_rows = inputs["rollout_rows"]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Same as GRPOTrainer._calculate_rewards, except that the prompts reach reward functions and reward models
        # without their audio parts (a text reward model cannot hear them), and a row left out gets no reward (NaN):
        # its advantage is then 0 and its group's baseline ignores it.
        rewards = super()._calculate_rewards(
            inputs, [without_audio_parts(p) for p in prompts], completions, completion_ids_list
        )
        left_out = self.accelerator.gather(self._forward_rows < 0)
        rewards[left_out] = torch.nan
        return rewards

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Same as GRPOTrainer.log, except that training logs carry the running counts of `skip_counter` by reason and
        # the peak memory of the logging window.
        if "loss" in logs:
            logs.update(training_logs(self.skip_counter, self.accelerator.device))
        super().log(logs, start_time)
