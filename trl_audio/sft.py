"""Supervised fine-tuning of speech LLMs on (audio + prompt -> transcript) rows: TRL's `SFTTrainer`, fed through the
same chat template -> processor path as the online trainer (`prompt_inputs`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import flush_left

from . import prompt_inputs
from .audio_config import AudioDataConfig, AutoBf16Config
from .preemption import GivesHandlersBackOnError, PreemptionCallback
from .prompt_inputs import SKIPPED_KEY
from .skips import SKIP_REASONS, SkipCounter


logger = logging.getLogger(__name__)


@dataclass
class AudioSFTConfig(AutoBf16Config, AudioDataConfig, SFTConfig):
    r"""
    Configuration class for [`AudioSFTTrainer`]: every field of TRL's `SFTConfig`, of `AutoBf16Config` (`bf16`: on
    where a GPU supports it) and of `AudioDataConfig` (`on_too_long`, `on_error`, `max_audio_seconds`,
    `save_on_preemption`: a row longer than `max_length` is one whose prompt and transcript do not fit), plus the ones
    below. The loss is on each row's transcript only (TRL's `completion_only_loss`); `packing`, `padding_free` and
    `assistant_only_loss` are not supported, and `dataset_kwargs` always holds `skip_prepare_dataset=True` (the
    collator decodes and processes each batch, as TRL does for images).

    Parameters:
        dataset_text_field (`str`, *optional*, defaults to `"text"`):
            Column holding each row's target transcript (`create_audio_dataset`'s `text`). The model learns to answer
            the row's `prompt` and `audio` with it, followed by the chat template's end of turn.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum number of tokens of prompt (audio placeholder tokens included) plus transcript. Unlike TRL, a row
            is never truncated: one that does not fit is handled as `on_too_long` says. `None`: no limit.
    """

    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Maximum number of tokens of prompt (audio placeholder tokens included) plus transcript. Unlike "
            "TRL, a row is never truncated: one that does not fit is handled as `on_too_long` says. None: no limit."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        unsupported = {
            "packing=True": self.packing,
            "padding_free=True": self.padding_free,
            "assistant_only_loss=True": self.assistant_only_loss,
            "completion_only_loss=False": self.completion_only_loss is False,
        }
        if any(unsupported.values()):
            raise ValueError(
                f"Audio SFT does not support {[name for name, given in unsupported.items() if given]}: each row is "
                "one padded sequence, and the loss is on its transcript."
            )


class AudioSFTCollator(prompt_inputs.AnsweredPromptCollator):
    """Collates rows of `prompt` (conversational, with an `{"type": "audio"}` part for the clip), `audio` and a
    transcript column into one batch for a model's forward with `labels`.

    The prompts go through the chat template (with the generation prompt) and the processor with their clips, as in
    the online trainer (`prompt_inputs.render_prompts` / `process_prompts`); each transcript, followed by the
    template's end of turn (`prompt_inputs.end_of_turn`), is tokenized apart, so that the prompt's tokens are those
    generation starts from. The rows are then flushed left (their positions count from 0, as for an unpadded row), and
    `labels` are -100 on prompt and padding positions: the loss is on the transcript and its end of turn.

    A row whose audio cannot be loaded (`on_error`) or that is longer than `max_length` tokens (`on_too_long`) is left
    out with a warning, or raises naming the row; the rows left out are counted by reason under `SKIPPED_KEY`. A
    batch with no row left holds empty tensors.
    """

    answer_name = "transcript"

    def __init__(
        self,
        processing_class: Any,
        text_column: str = "text",
        max_length: int | None = None,
        on_error: str = "skip",
        on_too_long: str = "skip",
        max_audio_seconds: float | None = None,
    ):
        super().__init__(processing_class, max_length, on_error, on_too_long, max_audio_seconds)
        self.answer_columns = (text_column,)

    def empty(self) -> dict[str, Any]:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "labels": empty}

    def collate(self, batch, prompts, answers) -> dict[str, Any]:
        (completions,) = answers
        attention_mask, input_ids, completion_mask = flush_left(
            torch.cat((prompts["attention_mask"], completions["attention_mask"]), dim=1),
            torch.cat((prompts["input_ids"], completions["input_ids"]), dim=1),
            torch.cat((torch.zeros_like(prompts["attention_mask"]), completions["attention_mask"]), dim=1),
        )
        labels = input_ids.masked_fill(completion_mask == 0, -100)
        return {**prompts, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class AudioSFTTrainer(GivesHandlersBackOnError, SFTTrainer):
    """Supervised fine-tuning for models that take audio + text prompts (Phi-4-multimodal, Qwen2-Audio, GLM-ASR, ...):
    TRL's `SFTTrainer` fed by `AudioSFTCollator`, the loss on each row's transcript.

    Takes the same arguments as TRL's `SFTTrainer`, plus `skip_counter`: the `SkipCounter` in which rows left out are
    counted (bad audio, rows longer than `max_length`, in training and evaluation batches); pass the one given to
    `create_audio_dataset` to count the dataset's skips too. Its counts are logged as `data/skipped/<reason>` and
    `data/skipped/total`. `model` is a loaded model and `processing_class` its processor (`init_model` gives both).

    A row has `prompt` (conversational messages whose user content includes `{"type": "audio"}`, or text), `audio` (a
    path, or `{"array", "sampling_rate"}`; absent or None for text-only rows) and its transcript in
    `args.dataset_text_field` (default `text`): the rows of `create_audio_dataset`.
    """

    _tag_names = ["trl", "sft", "trl-audio"]

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: AudioSFTConfig | None = None,
        data_collator: Any = None,
        processing_class: Any = None,
        skip_counter: SkipCounter | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("`args` must be an AudioSFTConfig.")
        if processing_class is None:
            raise ValueError("Pass the model's processor as `processing_class` (`init_model` returns it).")
        if data_collator is None:
            data_collator = AudioSFTCollator(
                processing_class,
                args.dataset_text_field,
                args.max_length,
                args.on_error,
                args.on_too_long,
                args.max_audio_seconds,
            )
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.preemption = PreemptionCallback() if args.save_on_preemption else None
        if self.preemption is not None:
            self.add_callback(self.preemption)

    def _set_signature_columns_if_needed(self):
        # Same as SFTTrainer._set_signature_columns_if_needed, except that the columns kept are those the collator
        # reads (TRL keeps its vision columns the same way), not the tokenized ones of a prepared dataset.
        if self._signature_columns is None:
            self._signature_columns = ["id", "prompt", "audio", self.args.dataset_text_field]

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # Same as Trainer._prepare_inputs, except that the rows the collator left out are counted in `skip_counter`
        # (and their counts leave the batch), and floating-point features (the audio) take the model's dtype, as in
        # the online trainer.
        inputs = dict(inputs)
        self.skip_counter.update(inputs.pop(SKIPPED_KEY, {}))
        return prompt_inputs.to_model_inputs(self.model, super()._prepare_inputs(inputs))

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        # Same as SFTTrainer.training_step, except that a batch with no row left (all skipped) gives a zero loss and
        # logs nothing; with several processes it runs as a stand-in instead (`_stand_in`).
        if not len(inputs["input_ids"]) and self.accelerator.num_processes == 1:
            self._prepare_inputs(inputs)  # counts its skips
            return torch.zeros((), device=self.accelerator.device)
        return super().training_step(model, self._stand_in(inputs), num_items_in_batch)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        # Same as SFTTrainer.prediction_step, except that a batch with no row left (all skipped) has no loss, so that
        # it does not count in the evaluation's average; with several processes it runs as a stand-in instead
        # (`_stand_in`), whose zero loss counts as one row's.
        if not len(inputs["input_ids"]) and self.accelerator.num_processes == 1:
            self._prepare_inputs(inputs)  # counts its skips
            return None, None, None
        return super().prediction_step(model, self._stand_in(inputs), prediction_loss_only, ignore_keys)

    def _stand_in(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """`inputs`, or, for a batch with no row left, one padding token that no label scores (with the batch's skip
        counts): a process whose rows were all skipped then takes part in the other processes' collective operations
        (forward and backward, the gathering of metrics and losses) without learning anything, so that none of them
        waits forever."""
        if len(inputs["input_ids"]):
            return inputs
        pad = torch.full((1, 1), self._tokenizer.pad_token_id)
        return {
            "input_ids": pad,
            "attention_mask": torch.ones_like(pad),
            "labels": torch.full_like(pad, -100),
            SKIPPED_KEY: inputs[SKIPPED_KEY],
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Same as SFTTrainer.log, except that training logs carry the running counts of `skip_counter`, by reason.
        if "loss" in logs:
            logs["data/skipped/total"] = self.skip_counter.total
            logs.update({f"data/skipped/{reason}": self.skip_counter.by_reason[reason] for reason in SKIP_REASONS})
        super().log(logs, start_time)
