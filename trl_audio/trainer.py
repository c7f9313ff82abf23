"""Online DPO with audio + text prompts: TRL's `OnlineDPOTrainer` with the audio carried through every pass."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import PreTrainedModel
from transformers.training_args import OptimizerNames
from trl.data_utils import is_conversational
from trl.experimental.online_dpo import OnlineDPOTrainer
from trl.experimental.utils import empty_cache
from trl.models.utils import unwrap_model_for_generation

from . import generation
from .config import AudioOnlineDPOConfig
from .judges import PairwiseJudge
from .metrics import reduce_over_processes, training_logs, write_completions
from .preemption import GivesHandlersBackOnError, PreemptionCallback
from .prompt_embeds import PromptBatch, PromptEncoder
from .prompt_inputs import (
    SKIPPED_KEY,
    AudioPromptCollator,
    audio_rows,
    placeholder_token_ids,
    prepare_prompts,
    processor_sampling_rate,
    prompt_text,
)
from .rewards import rewards_per_function
from .skips import SkipCounter
from .vllm_client import VLLMSampler


logger = logging.getLogger(__name__)


class AudioOnlineDPOTrainer(GivesHandlersBackOnError, OnlineDPOTrainer):
    """Online DPO for models that take audio + text prompts (Phi-4-multimodal, Qwen2-Audio, ...).

    Takes the same arguments as TRL's `OnlineDPOTrainer`, plus:

    - `judge`: a pairwise judge called as `judge(prompts, completions_a, completions_b, **columns)` that returns, per
      prompt, 0 (a preferred), 1 (b preferred) or None (no preference). With a judge, the samples are ranked by their
      wins in a round robin of the judge; `reward_funcs` may then be omitted, and those given are computed and logged
      only.
    - `preemption` (attribute): the `PreemptionCallback` that saves and stops on SIGTERM / SIGINT
      (`save_on_preemption`); `preemption.received` tells whether it did.
    - `skip_counter`: the `SkipCounter` in which rows left out are counted (bad audio met by the collator, prompts too
      long for `max_length`); pass the one given to `create_audio_dataset` to log the dataset's skips too. Its counts
      are logged as `data/skipped/<reason>` and `data/skipped/total`.

    A training row has `prompt` (conversational messages whose user content includes `{"type": "audio"}`, or text),
    `audio` (a path, or `{"array", "sampling_rate"}`; absent or None for text-only rows) and any other columns, which
    reach reward functions and judges unchanged. The processor's outputs travel as one dict through generation, the
    policy forward and the reference forward, so every audio model family runs through the same lines.
    """

    _tag_names = ["trl", "online-dpo", "trl-audio"]

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str,
        ref_model: PreTrainedModel | nn.Module | None = None,
        reward_funcs: Any = None,
        args: AudioOnlineDPOConfig | None = None,
        judge: PairwiseJudge | Callable[..., list[int | None]] | None = None,
        data_collator: Callable | None = None,
        skip_counter: SkipCounter | None = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("`args` must be an AudioOnlineDPOConfig.")
        if reward_funcs is None and judge is None:
            raise ValueError("Pass `reward_funcs`, a `judge`, or both (the judge then ranks the completions).")
        self.judge = judge
        if data_collator is None:
            data_collator = AudioPromptCollator(
                processor_sampling_rate(processing_class), args.on_error, args.max_audio_seconds
            )
        # TRL's own vLLM setup differs from ours: it imports vllm (which lives in its own environment here), opens an
        # NCCL group to the server and samples text/images only. So TRL sets up HF generation, and we talk to the
        # server over HTTP (`_generate_vllm`).
        use_vllm, args.use_vllm = args.use_vllm, False
        try:
            super().__init__(
                model=model,
                ref_model=ref_model,
                reward_funcs=reward_funcs if reward_funcs is not None else [],
                args=args,
                data_collator=data_collator,
                processing_class=processing_class,
                **kwargs,
            )
        finally:
            args.use_vllm = use_vllm
        self.use_vllm = use_vllm
        self.vllm_sampler = VLLMSampler(self.model, processing_class, self.accelerator, args) if use_vllm else None
        self.num_generations = args.num_generations
        self.sampling_rate = processor_sampling_rate(processing_class)
        # A sampled audio/image placeholder would make the model look for features that are not there (Phi-4-MM then
        # fails inside generate); such tokens never belong in an answer. Text-only tokenizers sample as in TRL.
        if placeholder_token_ids(processing_class):
            self.generation_kwargs["suppress_tokens"] = placeholder_token_ids(processing_class)
            self.generation_config.suppress_tokens = self.generation_kwargs["suppress_tokens"]
        if args.generate_with_cache:  # TRL turns the cache off under gradient checkpointing, which generation skips
            self.generation_kwargs["use_cache"] = True
            self.generation_config.use_cache = True
        self.prompt_encoder = PromptEncoder(
            self.accelerator, placeholder_token_ids(processing_class), args.reuse_audio_embeddings
        )
        self._last_completions: list[dict] = []
        self.preemption = PreemptionCallback() if args.save_on_preemption else None
        if self.preemption is not None:
            self.add_callback(self.preemption)
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.reward_names = self.reward_func_names + (["judge_wins"] if judge is not None else [])
        for name in self.reward_names:
            self.stats[f"rewards/{name}/mean"] = []
            self.stats[f"rewards/{name}/std"] = []
        for key in ("pairs/tied_fraction", "completions/mean_length", "audio/seconds", "perf/samples_per_second"):
            self.stats[key] = []
        if args.rpo_alpha is not None:
            self.stats["objective/nll_chosen"] = []

    def _prepare_prompt_inputs(self, inputs: dict[str, list]) -> tuple[dict[str, list], dict[str, torch.Tensor]]:
        """The kept rows' columns and the processor's outputs for them (`prompt_inputs.prepare_prompts`: rows whose
        prompt plus `max_new_tokens` cannot fit in `max_length` are skipped and counted, or raise)."""
        args = self.args
        return prepare_prompts(
            self.processing_class, inputs, args.max_length, args.max_new_tokens, "max_new_tokens",
            args.on_too_long, self.skip_counter,
        )  # fmt: skip

    def _prompt_batch(self, prompt_inputs: dict[str, torch.Tensor], audios: list | None) -> PromptBatch:
        """The step's prompts for the policy (`PromptEncoder.policy_batch`: each clip encoded once when it can be)."""
        return self.prompt_encoder.policy_batch(self.model, prompt_inputs, audio_rows(audios))

    def _reference_batch(self, batch: PromptBatch) -> PromptBatch:
        """The step's prompts for the reference (`PromptEncoder.reference_batch`)."""
        return self.prompt_encoder.reference_batch(batch, self.model, self.ref_model)

    def _generate(self, model, batch: PromptBatch):
        # Same as OnlineDPOTrainer._generate, except that: it takes the step's prompts as a `PromptBatch` (the
        # processor's outputs, audio features included whatever their names, or the audio embeddings read once), and
        # samples `num_generations` completions per prompt in one call (TRL's block layout: all prompts, then all
        # prompts again); it generates with the KV cache even under gradient checkpointing (`generate_with_cache`),
        # and gives gradient checkpointing back with the arguments it was enabled with; each prompt is prefilled once
        # and its cache shared by its samples (`share_prompt_prefill`).
        rows = list(range(len(batch))) * self.num_generations
        prompt_ids, prompt_mask = batch.inputs["input_ids"][rows], batch.inputs["attention_mask"][rows]
        with (
            unwrap_model_for_generation(
                model,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            FSDP.summon_full_params(self.model_wrapped, recurse=False) if self.is_fsdp_enabled else nullcontext(),
        ):
            if self.args.cache_implementation is not None:
                unwrapped_model.generation_config.cache_implementation = self.args.cache_implementation
            completion_ids, completion_mask = generation.sample(
                unwrapped_model,
                batch,
                rows,
                self.generation_config,
                self.eos_token_ids,
                self._tokenizer.pad_token_id,
                share_prefill=self.args.share_prompt_prefill and self.args.cache_implementation is None,
            )
        return prompt_ids, prompt_mask, completion_ids, completion_mask

    def _generate_vllm(self, batch: PromptBatch, inputs: dict[str, list]):
        # Same as OnlineDPOTrainer._generate_vllm_server, except that the samples come from `VLLMSampler` (the
        # prompts as chat messages with each row's clip, over HTTP, every process sending its own; TRL gathers them to
        # the main process and speaks NCCL), whose weights are pushed every `vllm_sync_steps` optimizer steps; and
        # the output is `_generate`'s: TRL's block layout, with the trainer's own (left-padded) prompt ids.
        self.vllm_sampler.sync(self.model, self.state.global_step)
        rows = list(range(len(batch))) * self.num_generations
        completion_ids, completion_mask = self.vllm_sampler.sample(
            batch,
            inputs,
            rows,
            self.args.max_new_tokens,
            self.eos_token_ids,
            self._tokenizer.pad_token_id,
            temperature=self.args.temperature,
            top_p=self.args.top_p,
            top_k=self.args.top_k,
            min_p=self.args.min_p,
            repetition_penalty=self.args.repetition_penalty,
        )
        return batch.inputs["input_ids"][rows], batch.inputs["attention_mask"][rows], completion_ids, completion_mask

    def _forward(self, model, batch: PromptBatch, rows: list[int], completion_ids, completion_mask):
        # Same as OnlineDPOTrainer._forward, except that: the prompts come as a `PromptBatch` and `rows` (row k of
        # `completion_ids` completes prompt `rows[k]`), so the audio reaches the model as the processor's outputs or
        # as the embeddings read once, through one code path for every family; prompts are never truncated (rows that
        # cannot fit were left out before generation); and log-probs come from a selective log-softmax over the
        # completion positions only.
        return generation.completion_logprobs(
            model, batch, rows, completion_ids, completion_mask, self.accelerator.unwrap_model(model)
        )

    def _calculate_rewards_from_functions(self, prompts, completions, completion_ids_list, **reward_kwargs):
        # Same as OnlineDPOTrainer._calculate_rewards_from_functions, except that it returns each function's rewards
        # too (for logging), reward models get the prompt without its audio parts (they only read text), and callables
        # get `completion_ids` without padding.
        device = self.accelerator.device
        rewards_per_func = rewards_per_function(
            self.reward_funcs,
            self.reward_processing_classes,
            prompts,
            completions,
            completion_ids_list,
            device,
            trainer_state=self.state,
            **reward_kwargs,
        )
        total = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        return total, rewards_per_func

    def _rank_with_judge(self, prompts, completions: list[str], columns: dict[str, Any]) -> torch.Tensor:
        """Each completion's number of wins in a round robin of the judge over the `num_generations` samples of its
        prompt (one judge call per pair of sample indices, batched over prompts)."""
        batch_size = len(prompts)
        wins = torch.zeros(self.num_generations, batch_size)
        for i, j in itertools.combinations(range(self.num_generations), 2):
            preferences = self.judge(
                prompts,
                completions[i * batch_size : (i + 1) * batch_size],
                completions[j * batch_size : (j + 1) * batch_size],
                **columns,
            )
            if len(preferences) != batch_size:
                raise ValueError(f"The judge returned {len(preferences)} preferences for {batch_size} prompts.")
            for b, preference in enumerate(preferences):
                if preference not in (0, 1, None):
                    raise ValueError(f"The judge must return 0, 1 or None per prompt, got {preference!r}.")
                if preference is not None:
                    wins[(i, j)[preference], b] += 1
        return wins.flatten().to(self.accelerator.device)

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: int | None = None
    ) -> torch.Tensor:
        # Same as OnlineDPOTrainer.training_step, except that:
        # - the prompts' audio goes through the processor, and its outputs through every pass, as one dict; each clip
        #   is encoded once per step while the audio encoder is frozen (`reuse_audio_embeddings`);
        # - rows with bad audio or too long a prompt are skipped and counted in `skip_counter`, never truncated; a
        #   batch with no row left returns a zero loss without logging anything (with several processes, it still
        #   takes part in their collective operations: `_take_part_without_rows`);
        # - `num_generations` samples per prompt (TRL: 2) give a best-vs-worst pair, and tied pairs are left out of
        #   the loss (TRL trains on them as if the first sample won);
        # - a pairwise judge may rank the samples (round robin) instead of the reward functions;
        # - the samples are ranked before the policy and reference passes, which then run on each prompt's chosen and
        #   rejected samples only (`forward_pairs_only`; TRL runs them on every sample);
        # - with `rpo_alpha`, the loss adds the chosen samples' mean token NLL (RPO, as TRL's DPOTrainer does; TRL's
        #   online DPO has no such term), logged as `objective/nll_chosen`;
        # - metrics are logged by `_log_step_metrics`, averaged over every process's samples (TRL: some per process),
        #   and KL and entropy differ from TRL's (see there).
        start_time = time.perf_counter()
        model.train()
        inputs = dict(inputs)
        self.skip_counter.update(inputs.pop(SKIPPED_KEY, {}))
        inputs, prompt_inputs = self._prepare_prompt_inputs(inputs) if inputs["prompt"] else (inputs, {})
        if not prompt_inputs:  # every row of this batch was skipped: nothing to learn from, nothing to average
            if self.accelerator.num_processes > 1:
                return self._take_part_without_rows(model)
            return torch.zeros((), device=self.accelerator.device)

        prompts = inputs["prompt"]
        batch_size, n = len(prompts), self.num_generations
        batch = self._prompt_batch(prompt_inputs, inputs.get("audio"))
        if self.use_vllm:
            _, _, completion_ids, completion_mask = self._generate_vllm(batch, inputs)
        else:
            _, _, completion_ids, completion_mask = self._generate(model, batch)
        contain_eos_token = torch.any(
            torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device)), dim=-1
        )
        rewards, rewards_per_func, texts = self._score(
            prompts, inputs, completion_ids, completion_mask, contain_eos_token
        )
        chosen_indices, rejected_indices, tied = select_pairs(rewards, n)
        if self.args.log_completions:
            self._last_completions = completions_table(
                inputs, texts, rewards, rewards_per_func, self.reward_names, chosen_indices, rejected_indices, tied
            )

        if self.args.forward_pairs_only:  # samples [chosen of each prompt, then rejected of each prompt]
            samples = torch.cat([chosen_indices, rejected_indices])
            chosen, rejected = torch.arange(batch_size), torch.arange(batch_size, 2 * batch_size)
        else:
            samples, chosen, rejected = torch.arange(batch_size * n), chosen_indices, rejected_indices
        rows = (samples % batch_size).tolist()
        sample_ids, sample_mask = completion_ids[samples], completion_mask[samples]
        width = max(int(sample_mask.sum(1).max()), 1)  # no pass over columns that are padding in every sample
        sample_ids, sample_mask = sample_ids[:, :width], sample_mask[:, :width]
        logprobs = self._forward(model, batch, rows, sample_ids, sample_mask)
        with torch.no_grad():
            reference = self._reference_batch(batch)
            if self.ref_model is not None:
                ref_logprobs = self._forward(self.ref_model, reference, rows, sample_ids, sample_mask)
            else:  # PEFT: the reference is the policy with its adapter disabled
                with self.model.disable_adapter():
                    ref_logprobs = self._forward(self.model, reference, rows, sample_ids, sample_mask)

        logprobs_sum = (logprobs * sample_mask).sum(1)
        ref_logprobs_sum = (ref_logprobs * sample_mask).sum(1)
        logratios = logprobs_sum[chosen] - logprobs_sum[rejected]
        ref_logratios = ref_logprobs_sum[chosen] - ref_logprobs_sum[rejected]
        loss = mean_over_preferred(dpo_losses(logratios, ref_logratios, self.beta, self.args.loss_type), tied)
        nll = None
        if self.args.rpo_alpha is not None:
            nll = mean_token_nll(logprobs[chosen], sample_mask[chosen])
            loss = loss + self.args.rpo_alpha * mean_over_preferred(nll, tied)
        kl = ((logprobs - ref_logprobs) * sample_mask).sum(1)

        if (
            self.args.torch_empty_cache_steps is not None
            and self.state.global_step % self.args.torch_empty_cache_steps == 0
        ):
            empty_cache()
        backward_kwargs = {}
        if self.args.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):  # they need the learning rate explicitly
            backward_kwargs["learning_rate"] = self._get_learning_rate()
        if self.args.n_gpu > 1:
            loss = loss.mean()
        self.accelerator.backward(loss, **backward_kwargs)
        self._log_step_metrics(
            inputs,
            rewards,
            rewards_per_func,
            (chosen_indices, rejected_indices, tied),
            (samples, chosen, rejected, logprobs_sum.detach(), ref_logprobs_sum, kl.detach(), nll),
            completion_mask,
            contain_eos_token,
            time.perf_counter() - start_time,
        )
        return loss.detach() / self.args.gradient_accumulation_steps

    def _take_part_without_rows(self, model: nn.Module) -> torch.Tensor:
        """A step for a process whose rows were all skipped while other processes train: the same collective
        operations as theirs (one forward and backward of the wrapped model, whose gradients are all zero, and the
        metrics' reduction, to which it adds nothing), so that no process waits forever."""
        pad = self._tokenizer.pad_token_id
        input_ids = torch.full((1, 1), pad if pad is not None else 0, device=self.accelerator.device)
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits.sum() * 0.0
        self.accelerator.backward(loss)
        self._log_step_metrics(None)
        return loss.detach()

    def _score(self, prompts, inputs, completion_ids, completion_mask, contain_eos_token):
        """Each sample's score (the weighted reward functions, or the judge's round-robin wins; minus
        `missing_eos_penalty` without an end token), each function's own rewards (with the wins last, for a judge),
        and the samples' texts: no model pass."""
        n = self.num_generations
        completion_texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if is_conversational({"prompt": prompts[0]}):
            completions = [[{"role": "assistant", "content": text}] for text in completion_texts]
        else:
            completions = completion_texts
        columns = {key: values for key, values in inputs.items() if key != "prompt"}
        rewards_per_func = torch.zeros(len(completions), 0, device=completion_ids.device)
        if self.reward_funcs:
            rewards, rewards_per_func = self._calculate_rewards_from_functions(
                prompts=n * prompts,
                completions=completions,
                completion_ids_list=[ids[mask.bool()].tolist() for ids, mask in zip(completion_ids, completion_mask)],
                **{k: v * n if isinstance(v, list) else v for k, v in columns.items()},
            )
        if self.judge is not None:  # the judge ranks; reward functions given alongside are only logged
            rewards = self._rank_with_judge(prompts, completion_texts, columns)
            rewards_per_func = torch.cat([rewards_per_func, rewards.unsqueeze(1)], dim=1)
        if self.args.missing_eos_penalty is not None:
            rewards[~contain_eos_token] -= self.args.missing_eos_penalty
        return rewards, rewards_per_func, completion_texts

    def _log_step_metrics(
        self,
        inputs: dict[str, list] | None,
        rewards: torch.Tensor | None = None,
        rewards_per_func: torch.Tensor | None = None,
        pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        passes: tuple[torch.Tensor, ...] | None = None,
        completion_mask: torch.Tensor | None = None,
        contain_eos_token: torch.Tensor | None = None,
        seconds: float | None = None,
    ) -> None:
        """Appends one step's metrics to `self.stats`: TRL's online-DPO metrics, then ours (`rewards/<name>/mean|std`
        per reward function, `pairs/tied_fraction`, `completions/mean_length`, `audio/seconds`).

        `rewards`, `completion_mask` and `contain_eos_token` cover every sample; `pairs` is `(chosen_indices,
        rejected_indices, tied)` from `select_pairs`; `passes` is `(samples, chosen, rejected, logps, ref_logps, kl,
        nll)` for the samples that went through the policy and reference passes: their indices, the positions of each
        prompt's chosen and rejected sample among them, their summed log-probs and log-ratios, and the chosen
        samples' mean token NLL (None without `rpo_alpha`; logged over the preferred pairs); `seconds` the step's
        time. Unlike TRL's, `objective/kl` and `objective/entropy` (and so `objective/non_score_reward` and
        `objective/rlhf_reward`) sum the per-token terms over the completion tokens only (TRL also sums over the
        padding after a completion's end), and are averaged over the samples that went through the passes: the chosen
        and rejected ones, with `forward_pairs_only`.

        Every metric is averaged over all processes' samples (`audio/seconds` and `perf/samples_per_second` are
        summed: the step's total), through one all-reduce of sums and counts; so every process calls this once per
        step, with `inputs=None` when all its rows were skipped (it then adds nothing to the averages).
        """
        values: dict[str, torch.Tensor] = {}
        if inputs is not None:
            chosen_indices, rejected_indices, tied = pairs
            samples, chosen, rejected, logps, ref_logps, kl, nll = passes
            chosen_rewards = self.beta * (logps[chosen] - ref_logps[chosen])
            rejected_rewards = self.beta * (logps[rejected] - ref_logps[rejected])
            margin = chosen_rewards - rejected_rewards
            values = {
                "objective/scores_margin": rewards[chosen_indices] - rewards[rejected_indices],
                "objective/scores": rewards,
                "val/contain_eos_token": contain_eos_token,
                "logps/chosen": logps[chosen],
                "logps/rejected": logps[rejected],
                "objective/kl": kl,
                "objective/non_score_reward": -self.beta * kl,
                "objective/rlhf_reward": rewards[samples] - self.beta * kl,
                "objective/entropy": -logps,
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/margins": margin,
                "rewards/accuracies": margin > 0,
                **{f"rewards/{name}": column for name, column in zip(self.reward_names, rewards_per_func.T)},
                "pairs/tied_fraction": tied,
                "completions/mean_length": completion_mask.sum(1),
            }
            if nll is not None:
                values["objective/nll_chosen"] = nll[~tied]
            audio = sum(len(a) for a in inputs.get("audio") or [] if a is not None) / (self.sampling_rate or 1)
            values["audio/seconds"] = torch.tensor(float(audio))
            values["perf/samples_per_second"] = torch.tensor(len(rewards) / seconds)
        step_metrics = [name for name in STEP_METRICS if name in self.stats]  # objective/nll_chosen with rpo_alpha
        names = [*step_metrics, *(f"rewards/{name}" for name in self.reward_names), *SUMMED_METRICS]
        for name, (mean, total, std, count) in reduce_over_processes(self.accelerator, values, names).items():
            if name in SUMMED_METRICS:
                self.stats[name].append(total if count else float("nan"))
            elif name.removeprefix("rewards/") in self.reward_names:
                self.stats[f"{name}/mean"].append(mean)
                self.stats[f"{name}/std"].append(std)
            else:
                self.stats[name].append(mean)
        self.stats["beta"].append(self.beta)

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # Same as OnlineDPOTrainer._maybe_log_save_evaluate, except that a metric with no value in the logging window
        # (every batch skipped, or all rewards None) is logged as NaN instead of failing on an empty average.
        self.stats = {key: [v for v in values if v == v] or [float("nan")] for key, values in self.stats.items()}
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Same as Trainer.log, except that training logs carry the running counts of `skip_counter` by reason and the
        # peak memory of the logging window, and are followed by the completions table when `log_completions` is on.
        if "loss" in logs:
            logs.update(training_logs(self.skip_counter, self.accelerator.device))
        super().log(logs, start_time)
        if "loss" in logs and self.args.log_completions and self._last_completions:
            if self.is_world_process_zero():
                write_completions(
                    self._last_completions,
                    self.state.global_step,
                    self.args.output_dir,
                    self.args.report_to,
                    self.callback_handler.callbacks,
                    self.reward_names,
                )
            self._last_completions = []


# The step metrics `_log_step_metrics` averages over every process's samples, in a fixed order (the same on every
# process), and those it sums.
STEP_METRICS = (
    "objective/scores_margin",
    "objective/scores",
    "val/contain_eos_token",
    "logps/chosen",
    "logps/rejected",
    "objective/kl",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/entropy",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "pairs/tied_fraction",
    "completions/mean_length",
    "objective/nll_chosen",
)
SUMMED_METRICS = ("audio/seconds", "perf/samples_per_second")


def completions_table(
    inputs: dict[str, list],
    texts: list[str],
    scores: torch.Tensor,
    rewards_per_func: torch.Tensor,
    reward_names: list[str],
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    tied: torch.Tensor,
) -> list[dict]:
    """One step's prompts with their samples (TRL's block layout: sample k of prompt b at `k * batch + b`): per prompt
    its `id`, `prompt` text, `reference` (the `text` column, None without it) and `samples`, each with its
    `completion`, `score`, `rewards` by function name (None where a function gave none) and `role` in the pair
    (`chosen`, `rejected`, or None; all None when the prompt's samples tie)."""
    batch = len(inputs["prompt"])
    rows = []
    for b in range(batch):
        roles = {} if tied[b] else {int(chosen[b]): "chosen", int(rejected[b]): "rejected"}
        samples = [
            {
                "completion": texts[k],
                "score": float(scores[k]),
                "rewards": {
                    n: None if v != v else float(v) for n, v in zip(reward_names, rewards_per_func[k].tolist())
                },
                "role": roles.get(k),
            }
            for k in range(b, len(texts), batch)
        ]
        rows.append(
            {
                "id": inputs["id"][b] if "id" in inputs else None,
                "prompt": prompt_text(inputs["prompt"][b]),
                "reference": inputs["text"][b] if "text" in inputs else None,
                "samples": samples,
            }
        )
    return rows


def select_pairs(rewards: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best vs worst sample of each prompt. `rewards` holds `num_generations` blocks of one reward per prompt (TRL's
    layout: all prompts, then all prompts again). Returns the chosen and rejected indices into `rewards`, and which
    prompts' samples all tie (no preference). On ties argmax/argmin take the first index, as TRL's `>=` does."""
    per_prompt = rewards.view(num_generations, -1)
    batch_range = torch.arange(per_prompt.size(1), device=rewards.device)
    chosen = per_prompt.argmax(dim=0) * per_prompt.size(1) + batch_range
    rejected = per_prompt.argmin(dim=0) * per_prompt.size(1) + batch_range
    tied = per_prompt.max(dim=0).values == per_prompt.min(dim=0).values
    return chosen, rejected, tied


def mean_over_preferred(losses: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
    """Mean loss over the pairs that carry a preference; tied pairs count for nothing (0 when all tie, with the
    graph kept so that backward still runs)."""
    preferred = ~tied
    return (losses * preferred).sum() / preferred.sum().clamp(min=1)


def mean_token_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's negative log-likelihood per token: minus its token log-probs summed over `mask`, over its
    number of tokens (at least 1)."""
    return -(logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)


def dpo_losses(pi_logratios: torch.Tensor, ref_logratios: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:
    """Per-pair DPO loss from chosen-minus-rejected log-ratios of the policy and the reference (TRL's two losses):
    `sigmoid` is -log σ(β·h), `ipo` is (h - 1/(2β))², with h = pi_logratios - ref_logratios."""
    logits = pi_logratios - ref_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(f"Unknown loss_type {loss_type!r}: use 'sigmoid' or 'ipo'.")
