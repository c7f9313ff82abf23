"""Reward functions for transcription, with TRL's reward-function signature: `f(completions=..., **columns)`."""

from __future__ import annotations

import re
from typing import Any

import jiwer

from .text import normalize_transcript


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or conversational messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text") or "" for part in content)


def word_error_rate(hypothesis: str, reference: str) -> float:
    """WER of `hypothesis` against `reference` after normalization. An empty reference gives 0 for an empty
    hypothesis and 1 otherwise (jiwer cannot divide by zero words)."""
    hypothesis, reference = normalize_transcript(hypothesis), normalize_transcript(reference)
    if not reference:
        return float(bool(hypothesis))
    return jiwer.wer(reference, hypothesis)


def wer_reward(completions: list[Any], text: list[str], **kwargs: Any) -> list[float]:
    """Minus the word error rate of each completion against the reference transcript in the `text` column."""
    return [-word_error_rate(completion_text(c), reference) for c, reference in zip(completions, text)]


def keyword_recall(hypothesis: str, keywords: list[str]) -> float | None:
    """Share of `keywords` (words or phrases) found as whole words in the normalized hypothesis; None without
    keywords."""
    if not keywords:
        return None
    hypothesis = f" {normalize_transcript(hypothesis)} "
    found = sum(f" {normalize_transcript(k)} " in hypothesis for k in keywords if normalize_transcript(k))
    return found / len(keywords)


def bias_word_recall_reward(completions: list[Any], keywords: list[list[str]], **kwargs: Any) -> list[float | None]:
    """Recall of each row's `keywords` (the rare words of its transcript) in the completion; None for rows without
    keywords, which the trainer then leaves out of this function's sum."""
    return [keyword_recall(completion_text(c), words) for c, words in zip(completions, keywords)]


def word_count_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Minus the number of words of each completion: a reward any model can satisfy (be brief), for tests and demos
    of the training loop itself."""
    return [-float(len(re.findall(r"\S+", completion_text(c)))) for c in completions]


# The names `get_reward_funcs` (and the CLI's --reward_funcs) accept.
REWARD_FUNCS = {"wer": wer_reward, "bias_word_recall": bias_word_recall_reward, "word_count": word_count_reward}


def get_reward_funcs(names: list[str]) -> list:
    """The reward functions called `names` (keys of `REWARD_FUNCS`), in order; raises on an unknown or empty list."""
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown or not names:
        raise ValueError(f"reward_funcs must be names among {list(REWARD_FUNCS)}, got {names}.")
    return [REWARD_FUNCS[name] for name in names]
