"""Reward functions for transcription, with TRL's reward-function signature: `f(completions=..., **columns)`, and
`get_reward_funcs`, which picks them by name with one normalization for all."""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jiwer
import torch
import torch.nn as nn
from trl.data_utils import apply_chat_template, is_conversational

from .evaluation import evaluate_transcripts
from .prompt_inputs import without_audio_parts
from .text import normalize, normalizer


# A dataset column as reward functions get it: one value per sample, None for a row without one; the whole column None
# when the dataset has no such column.
Text = list[str | None] | None
Keywords = list[Sequence[str] | None] | None


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or conversational messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text") or "" for part in content)


def _error_rate(measure: Callable, hypothesis: str, reference: str, normalization: str) -> float:
    hypothesis, reference = normalize(hypothesis, normalization), normalize(reference, normalization)
    if not reference:  # jiwer < 4 refuses an empty reference, jiwer 4 counts insertions: one bounded convention
        return float(bool(hypothesis))
    return measure(reference, hypothesis)


def word_error_rate(hypothesis: str, reference: str, normalization: str = "whisper") -> float:
    """`jiwer.wer` of `hypothesis` against `reference`, both normalized (`text.normalize`). An empty reference gives 0
    for an empty hypothesis and 1 otherwise."""
    return _error_rate(jiwer.wer, hypothesis, reference, normalization)


def character_error_rate(hypothesis: str, reference: str, normalization: str = "whisper") -> float:
    """`jiwer.cer` (spaces count as characters) of `hypothesis` against `reference`, both normalized. An empty
    reference gives 0 for an empty hypothesis and 1 otherwise."""
    return _error_rate(jiwer.cer, hypothesis, reference, normalization)


def row_wer(name: str, hypothesis: str, reference: str, keywords: Sequence[str], normalization: str) -> float | None:
    """`evaluate_transcripts`' rate `name` (`"b_wer"`, `"u_wer"`) of one row; None where its denominator is 0."""
    rate = evaluate_transcripts([hypothesis], [reference], [keywords], normalization)[name]
    return None if math.isnan(rate) else rate


def insertion_rate(hypothesis: str, reference: str, normalization: str = "whisper") -> float:
    """Words inserted in `hypothesis` (as `evaluate_transcripts` aligns them) per reference word, I / max(N, 1): an
    empty reference (silence) counts each word of the hypothesis."""
    counts = evaluate_transcripts([hypothesis], [reference], normalization=normalization)
    return counts["insertions"] / max(counts["ref_words"], 1)


def keyword_recall(hypothesis: str, keywords: Sequence[str], normalization: str = "whisper") -> float | None:
    """Share of `keywords` (words or phrases) found as whole words in the normalized hypothesis; None without
    keywords."""
    if not keywords:
        return None
    hypothesis = f" {normalize(hypothesis, normalization)} "
    keywords = [normalize(k, normalization) for k in keywords]
    return sum(bool(k) and f" {k} " in hypothesis for k in keywords) / len(keywords)


def _per_row(score: Callable, completions: list[Any], *columns: Sequence[Any] | None) -> list[float | None]:
    """`score(text, *values)` for each completion and its row's values; None for rows where a value is None, and for
    every row when a column is missing (None): no reward rather than a made-up one."""
    if any(column is None for column in columns):
        return [None] * len(completions)
    return [
        None if any(value is None for value in values) else score(completion_text(completion), *values)
        for completion, *values in zip(completions, *columns)
    ]


def _negated(value: float | None) -> float | None:
    return None if value is None else -value


def wer_reward(
    completions: list[Any], text: Text = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Minus the word error rate of each completion against its reference transcript (`text`)."""
    return _per_row(lambda h, r: -word_error_rate(h, r, normalization), completions, text)


def cer_reward(
    completions: list[Any], text: Text = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Minus the character error rate of each completion against its reference transcript (`text`)."""
    return _per_row(lambda h, r: -character_error_rate(h, r, normalization), completions, text)


def bias_wer_reward(
    completions: list[Any], text: Text = None, keywords: Keywords = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Minus the B-WER of each completion (`evaluate_transcripts` on its row alone, the row's `keywords` as bias
    words); None for a row whose reference holds no bias word."""
    return _per_row(lambda h, r, k: _negated(row_wer("b_wer", h, r, k, normalization)), completions, text, keywords)


def unbiased_wer_reward(
    completions: list[Any], text: Text = None, keywords: Keywords = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Minus the U-WER of each completion (`evaluate_transcripts` on its row alone, the row's `keywords` as bias
    words); None for a row whose reference holds only bias words."""
    return _per_row(lambda h, r, k: _negated(row_wer("u_wer", h, r, k, normalization)), completions, text, keywords)


def bias_word_recall_reward(
    completions: list[Any], keywords: Keywords = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Recall of each row's `keywords` (the rare words of its transcript) in the completion; None for rows without
    keywords, which the trainer then leaves out of this function's sum."""
    return _per_row(lambda h, k: keyword_recall(h, k, normalization), completions, keywords)


def insertion_penalty_reward(
    completions: list[Any], text: Text = None, normalization: str = "whisper", **kwargs: Any
) -> list[float | None]:
    """Minus the words each completion inserts per reference word (`insertion_rate`): against hallucinated words,
    long output on short audio, which substitutions and deletions do not catch."""
    return _per_row(lambda h, r: -insertion_rate(h, r, normalization), completions, text)


def word_count_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Minus the number of words of each completion: a reward any model can satisfy (be brief), for tests and demos
    of the training loop itself. It counts what was written, whitespace-separated, with no normalization (Whisper's
    would fold "one two three" into "123")."""
    return [-float(len(re.findall(r"\S+", completion_text(c)))) for c in completions]


# The names `get_reward_funcs` (and the CLI's --reward_funcs) accept.
REWARD_FUNCS = {
    "wer": wer_reward,
    "cer": cer_reward,
    "bias_wer": bias_wer_reward,
    "unbiased_wer": unbiased_wer_reward,
    "bias_word_recall": bias_word_recall_reward,
    "insertion_penalty": insertion_penalty_reward,
    "word_count": word_count_reward,
}


class NormalizedReward:
    """A reward function with its `normalization` fixed, named after the function with the normalization as suffix
    (`wer_reward_simple`), so that the trainer logs it under its own key (`rewards/wer_reward_simple/mean`). A class
    rather than a `functools.partial`, which TRL names after the function it wraps."""

    def __init__(self, func: Callable, normalization: str):
        self.func, self.normalization = func, normalization
        self.__name__ = f"{func.__name__}_{normalization}"

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]:
        return self.func(completions, normalization=self.normalization, **columns)

    def __repr__(self) -> str:
        return f"NormalizedReward({self.func.__name__}, normalization={self.normalization!r})"


def get_reward_funcs(names: list[str], normalization: str = "whisper") -> list[Callable]:
    """The reward functions called `names` (keys of `REWARD_FUNCS`), in order, scoring text under `normalization`
    (`text.normalize`). With the default, the functions themselves (logged as `rewards/wer_reward/mean`, ...); with
    another, `NormalizedReward`s named `wer_reward_simple`, ...; functions that read no normalized text
    (`word_count_reward`) come as they are. Raises on an unknown or empty list, or an unknown normalization."""
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown or not names:
        close = {name: difflib.get_close_matches(name, REWARD_FUNCS, n=1) for name in unknown}
        hints = "".join(f" Did you mean {match[0]!r} for {name!r}?" for name, match in close.items() if match)
        raise ValueError(f"reward_funcs must be one or more of {list(REWARD_FUNCS)}, got {names}.{hints}")
    normalizer(normalization)  # raises on an unknown one before any training
    funcs = [REWARD_FUNCS[name] for name in names]
    if normalization == "whisper":
        return funcs
    return [
        NormalizedReward(f, normalization) if "normalization" in inspect.signature(f).parameters else f for f in funcs
    ]


def reward_model_texts(prompts: list[Any], completions: list[Any], tokenizer: Any) -> list[str]:
    """Each prompt + completion as a text reward model reads it: a conversational prompt without its audio parts
    (`prompt_inputs.without_audio_parts`), with the completion (a string, or assistant messages) as the assistant's
    answer, through `tokenizer`'s chat template; a text prompt and a string completion joined as they are."""
    if not is_conversational({"prompt": prompts[0]}):
        return [p + c for p, c in zip(prompts, completions)]
    texts = []
    for prompt, completion in zip(prompts, completions):
        answer = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        texts.append(apply_chat_template({"messages": without_audio_parts(prompt) + answer}, tokenizer)["text"])
    return texts


def rewards_per_function(
    reward_funcs: list[Callable | nn.Module],
    reward_processing_classes: list[Any],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    device: torch.device,
    **columns: Any,
) -> torch.Tensor:
    """One column per reward function, one row per sample: a reward model (an `nn.Module`) scores the text of prompt +
    completion (`reward_model_texts`: it cannot hear the audio), a callable gets `prompts`, `completions`,
    `completion_ids` (without padding) and every other column (`columns`: `text`, `keywords`, `trainer_state`, ...)
    and may return None for a sample (NaN here)."""
    rewards = torch.zeros(len(prompts), len(reward_funcs), device=device)
    for i, (reward_func, processing_class) in enumerate(zip(reward_funcs, reward_processing_classes)):
        if isinstance(reward_func, nn.Module):
            inputs = processing_class(
                text=reward_model_texts(prompts, completions, processing_class),
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            )
            with torch.inference_mode():
                rewards[:, i] = reward_func(**inputs.to(device)).logits[:, 0]
        else:
            output = reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            rewards[:, i] = torch.tensor([torch.nan if r is None else r for r in output], device=device)
    return rewards
