"""Sampling completions of audio prompts and scoring them token by token, for every trainer: generation in which each
prompt is prefilled once and its samples continue from that cache (any sample order), and the per-token log-probs of
(prompt with its own clip + completion)."""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from peft import PeftModel
from transformers import Cache, GenerationConfig
from trl.experimental.utils import truncate_right
from trl.trainer.utils import selective_log_softmax

from .prompt_embeds import PromptBatch


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward can compute logits for the last positions only (most causal LMs can; Qwen2-Audio
    cannot)."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def prefill(model: nn.Module, batch: PromptBatch, rows: list[int]) -> Cache:
    """The KV cache of every prompt but its last token, computed once per prompt (audio included) and repeated for the
    sampled rows `rows` (row k continues prompt `rows[k]`); positions follow the left padding as `generate` numbers
    them."""
    unique = list(range(len(batch)))
    input_ids, attention_mask = batch.inputs["input_ids"][:, :-1], batch.inputs["attention_mask"][:, :-1]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = batch.model_inputs(model, unique, input_ids, attention_mask)
    logits_to_keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache = model(**inputs, position_ids=position_ids, use_cache=True, **logits_to_keep).cache
    cache.reorder_cache(torch.tensor(rows, device=input_ids.device))
    return cache


def sample(
    model: nn.Module,
    batch: PromptBatch,
    rows: list[int],
    generation_config: GenerationConfig,
    eos_token_ids: list[int],
    pad_token_id: int,
    share_prefill: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One completion per entry of `rows`, sample k continuing prompt `rows[k]` of `batch` (any order, repeats
    allowed): `(completion_ids, completion_mask)`, right-padded after each sample's first end token. `model` is the
    unwrapped model, called under `torch.no_grad()` by the trainer (which owns the unwrapping for generation).

    With `share_prefill` (and the cache on; the caller leaves it off for a static cache implementation), each prompt
    runs through the model once and its samples continue from that KV cache (only their last prompt token is new);
    otherwise each sample's prompt is prefilled on its own, as `generate` does.
    """
    prompt_ids, prompt_mask = batch.inputs["input_ids"][rows], batch.inputs["attention_mask"][rows]
    if share_prefill and generation_config.use_cache and prompt_ids.size(1) > 1:
        inputs = {"cache": prefill(model, batch, rows)}
    else:
        inputs = batch.model_inputs(model, rows, prompt_ids, prompt_mask)
    output = model.generate(
        **{"input_ids": prompt_ids, "attention_mask": prompt_mask, **inputs}, generation_config=generation_config
    )
    return truncate_right(output[:, prompt_ids.size(1) :], eos_token_ids, pad_token_id)


def completion_logprobs(
    model: nn.Module,
    batch: PromptBatch,
    rows: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    unwrapped: nn.Module | None = None,
) -> torch.Tensor:
    """Per-token log-probs of `completion_ids` (row k completes prompt `rows[k]` of `batch`), from one forward of
    `model` over (prompt with its clip + completion): the audio reaches it as the processor's outputs or as the
    embeddings read once, through one code path for every family. Prompts are never truncated. `unwrapped` is `model`
    without its distributed wrapper (default: `model`). Logits are computed for the completion positions only where
    the model allows it, and log-probs come from a selective log-softmax."""
    unwrapped = model if unwrapped is None else unwrapped
    prompt_ids, prompt_mask = batch.inputs["input_ids"][rows], batch.inputs["attention_mask"][rows]
    input_ids = torch.cat((prompt_ids, completion_ids), dim=1)
    attention_mask = torch.cat((prompt_mask, completion_mask), dim=1)
    model_inputs = batch.model_inputs(unwrapped, rows, input_ids, attention_mask)
    if accepts_logits_to_keep(unwrapped):  # spares the prompt's vocabulary-wide logits
        logits = model(**model_inputs, logits_to_keep=completion_ids.size(1) + 1).logits[:, :-1]
    else:
        logits = model(**model_inputs).logits[:, prompt_ids.size(1) - 1 : -1]
    return selective_log_softmax(logits, completion_ids)
