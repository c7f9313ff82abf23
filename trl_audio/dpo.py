"""Offline DPO with audio + text prompts: TRL's `DPOTrainer` on `chosen` / `rejected` transcripts of each clip (the
pairs `create_audio_dataset`'s `simu_preference` builds), each clip encoded once for both sides and the reference."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import flush_left

from .audio_config import AudioDataConfig, AudioEmbeddingsConfig, AutoBf16Config
from .metrics import training_logs
from .preemption import GivesHandlersBackOnError, PreemptionCallback
from .prompt_embeds import PromptBatch, PromptEncoder
from .prompt_inputs import SKIPPED_KEY, AnsweredPromptCollator, audio_rows, placeholder_token_ids, tokenizer_of
from .skips import SkipCounter


logger = logging.getLogger(__name__)

# The collated batch's entry with the B prompts' processor outputs (the clips' features once each), which the trainer
# turns into the model's audio inputs for the 2B rows (`AUDIO_PROMPTS`): chosen rows first, then rejected ones.
PROMPT_INPUTS = "prompt_inputs"
AUDIO_PROMPTS = "audio_prompts"


@dataclass
class AudioDPOConfig(AutoBf16Config, AudioEmbeddingsConfig, AudioDataConfig, DPOConfig):
    r"""
    Configuration class for [`AudioDPOTrainer`]: every field of TRL's `DPOConfig` (loss types, `beta`, `loss_weights`
    with `"sft"` for RPO, `precompute_ref_log_probs`, ...), of `AutoBf16Config` (`bf16`: on where a GPU supports it),
    `AudioEmbeddingsConfig` (`reuse_audio_embeddings`) and `AudioDataConfig` (`on_too_long`, `on_error`,
    `max_audio_seconds`, `save_on_preemption`). Unlike TRL, a row longer than `max_length` (its prompt, audio
    placeholders included, plus the longer of its two answers) is never truncated: it is handled as `on_too_long`
    says.
    """


class AudioPreferenceCollator(AnsweredPromptCollator):
    """Collates rows of `prompt` (with an `{"type": "audio"}` part for the clip), `audio`, `chosen` and `rejected`
    into one batch of 2B rows, the B chosen answers then the B rejected ones, each after its prompt: `input_ids`,
    `attention_mask` and `completion_mask` (flushed left, as TRL's collators do), and under `PROMPT_INPUTS` the
    processor's outputs for the B prompts, each clip's features once (the trainer hands them to the model for both
    sides, or reads their embeddings once); and the rows' precomputed reference log-probs where the dataset has them.

    The prompts go through the chat template and the processor as in every audio trainer (`prompt_inputs`), each
    answer is tokenized apart with the template's end of turn after it (`prompt_inputs.end_of_turn`). A row whose
    audio cannot be loaded (`on_error`) or whose prompt plus longer answer exceeds `max_length` (`on_too_long`) is
    left out with a warning, or raises naming the row; the rows left out are counted by reason under `SKIPPED_KEY`. A
    batch with no row left holds empty tensors.
    """

    answer_columns = ("chosen", "rejected")
    answer_name = "longer answer"

    def empty(self) -> dict[str, Any]:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "completion_mask": empty, PROMPT_INPUTS: {}}

    def collate(self, batch, prompts, answers) -> dict[str, Any]:
        chosen, rejected = answers
        width = max(chosen["input_ids"].size(1), rejected["input_ids"].size(1))
        pad = tokenizer_of(self.processing_class).pad_token_id
        answer_ids = torch.cat([_pad_right(a["input_ids"], width, pad) for a in answers])
        answer_mask = torch.cat([_pad_right(a["attention_mask"], width, 0) for a in answers])
        rows = list(range(prompts["input_ids"].size(0))) * 2
        prompt_ids, prompt_mask = prompts["input_ids"][rows], prompts["attention_mask"][rows]
        attention_mask, input_ids, completion_mask = flush_left(
            torch.cat((prompt_mask, answer_mask), dim=1),
            torch.cat((prompt_ids, answer_ids), dim=1),
            torch.cat((torch.zeros_like(prompt_mask), answer_mask), dim=1),
        )
        collated = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            PROMPT_INPUTS: {**prompts, "audio_rows": torch.tensor(audio_rows(batch.get("audio")))},
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):  # precomputed (`precompute_ref_log_probs`)
            if key in batch:
                collated[key] = torch.tensor(batch[key])
        return collated


def _pad_right(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.size(1)), value=value)


class AudioDPOTrainer(GivesHandlersBackOnError, DPOTrainer):
    """Offline DPO for models that take audio + text prompts (Phi-4-multimodal, Qwen2-Audio, GLM-ASR, ...): TRL's
    `DPOTrainer` fed by `AudioPreferenceCollator`, its loss unchanged.

    Takes the same arguments as TRL's `DPOTrainer`, plus `skip_counter`: the `SkipCounter` in which rows left out are
    counted (bad audio, rows longer than `max_length`), logged as `data/skipped/<reason>`; pass the one given to
    `create_audio_dataset` to count the dataset's skips too. A row has `prompt`, `audio` (a path or `{"array",
    "sampling_rate"}`, None for a text-only row), `chosen` and `rejected` (assistant messages or strings): the rows of
    `create_audio_dataset` with `simu_preference`. A dataset without an `audio` column goes through TRL's own text
    path unchanged.

    Each clip is encoded once per step, for both sides and for the reference, while the audio path is frozen
    (`reuse_audio_embeddings`): the policy's embeddings serve the reference (the policy with its adapter disabled)
    unless a PEFT adapter sits on the audio path, and a separate `ref_model` reads its own once. The models get the
    audio through a forward pre-hook (`_audio_inputs`, set for the duration of each loss and reference computation)
    that turns the batch's `AUDIO_PROMPTS` entry into their audio inputs for the 2B rows, so TRL's loss code runs as
    it is.
    """

    _tag_names = ["trl", "dpo", "trl-audio"]

    def __init__(
        self,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        args: AudioDPOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        skip_counter: SkipCounter | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("`args` must be an AudioDPOConfig.")
        self._is_audio_dataset = "audio" in next(iter(train_dataset))
        if self._is_audio_dataset and data_collator is None:
            data_collator = AudioPreferenceCollator(
                processing_class, args.max_length, args.on_error, args.on_too_long, args.max_audio_seconds
            )
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()  # before TRL's precompute
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.preemption = PreemptionCallback() if args.save_on_preemption else None
        if self.preemption is not None:
            self.add_callback(self.preemption)

    @functools.cached_property
    def prompt_encoder(self) -> PromptEncoder:
        """Reads each clip's embeddings once per step (created on first use: TRL precomputes reference log-probs
        inside its `__init__`)."""
        return PromptEncoder(
            self.accelerator, placeholder_token_ids(self.processing_class), self.args.reuse_audio_embeddings
        )

    @contextlib.contextmanager
    def _audio_hooks(self, *models: nn.Module | None):
        """`_audio_inputs` as a forward pre-hook of each of `models` (unwrapped) while the context runs."""
        handles = [
            self.accelerator.unwrap_model(model).register_forward_pre_hook(self._audio_inputs, with_kwargs=True)
            for model in models
            if model is not None
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Same as DPOTrainer._prepare_dataset, except that an audio dataset is left as it is: the collator decodes
        # and processes each batch (as TRL does for images).
        if self._is_audio_dataset:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        # Same as DPOTrainer._set_signature_columns_if_needed, except that an audio dataset keeps the columns the
        # collator reads (and precomputed reference log-probs).
        if self._signature_columns is None and self._is_audio_dataset:
            self._signature_columns = ["id", "prompt", "audio", "chosen", "rejected"]
            self._signature_columns += ["ref_chosen_logps", "ref_rejected_logps"]
        super()._set_signature_columns_if_needed()

    def _audio_batch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A collated batch as TRL's loss takes it: the rows left out counted (and their count gone), and the B
        prompts' processor outputs replaced by `AUDIO_PROMPTS`: the policy's and the reference's `PromptBatch`, with
        each clip's embeddings read once where they can be reused."""
        inputs = dict(inputs)
        self.skip_counter.update(inputs.pop(SKIPPED_KEY, {}))
        prompts = dict(inputs.pop(PROMPT_INPUTS))
        if not prompts:
            return inputs
        rows_with_audio = prompts.pop("audio_rows").tolist()
        policy = self.prompt_encoder.policy_batch(self.model, prompts, rows_with_audio)
        if self.ref_model is None:  # the reference is the policy's own call, with its adapter off
            policy = reference = self.prompt_encoder.shared_with_adapter_off(policy, self.model)
        else:
            reference = self.prompt_encoder.reference_batch(policy, self.model, self.ref_model)
        inputs[AUDIO_PROMPTS] = {"policy": policy, "reference": reference}
        return inputs

    def _audio_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook of the policy and of the reference model: replaces `AUDIO_PROMPTS` by the model's audio
        inputs for the 2B rows (row k continues prompt k mod B): the embeddings read once, merged into the input
        embeddings, or the clips' features, each repeated for its two rows."""
        prompts = kwargs.pop(AUDIO_PROMPTS, None)
        if prompts is None:
            return None
        batch: PromptBatch = prompts["reference" if module is self.ref_model else "policy"]
        input_ids, attention_mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask")
        rows = list(range(len(batch))) * 2
        return args, {**kwargs, **batch.model_inputs(module, rows, input_ids, attention_mask)}

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # Same as Trainer._prepare_inputs, except that an audio batch is turned into what TRL's loss takes
        # (`_audio_batch`).
        inputs = super()._prepare_inputs(inputs)
        return self._audio_batch(inputs) if self._is_audio_dataset else inputs

    def compute_ref_log_probs(self, model, inputs):
        # Same as DPOTrainer.compute_ref_log_probs (`precompute_ref_log_probs`), except that an audio batch is turned
        # into what TRL's loss takes; a row left out would shift the precomputed log-probs onto other rows, so it
        # stops with an error instead.
        if not self._is_audio_dataset:
            return super().compute_ref_log_probs(model, inputs)
        if sum(inputs[SKIPPED_KEY].values()):
            raise ValueError(
                f"precompute_ref_log_probs: rows were left out ({inputs[SKIPPED_KEY]}), which would misalign the "
                "precomputed log-probs with the dataset's rows. Build the dataset with on_error='skip' (it drops bad "
                "rows up front) and raise max_length, or set precompute_ref_log_probs=False."
            )
        with self._audio_hooks(model):
            return super().compute_ref_log_probs(model, self._audio_batch(inputs))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Same as DPOTrainer.compute_loss, except that the policy and the reference model take an audio batch's
        # `AUDIO_PROMPTS` as their audio inputs (`_audio_inputs`, hooked for the duration of the call).
        if AUDIO_PROMPTS not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self._audio_hooks(model, self.ref_model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        # Same as DPOTrainer.training_step, except that a batch with no row left (all skipped) gives a zero loss and
        # logs nothing (on one process; with several, see the note in README_phi4_multimodal_dpo.md).
        if self._is_audio_dataset and not len(inputs["input_ids"]):
            self.skip_counter.update(inputs[SKIPPED_KEY])
            return torch.zeros((), device=self.accelerator.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Same as DPOTrainer.log, except that training logs carry the running counts of `skip_counter` by reason and
        # the peak memory of the logging window.
        if "loss" in logs:
            logs.update(training_logs(self.skip_counter, self.accelerator.device))
        super().log(logs, start_time)
