"""Pairwise judges: given two completions per prompt, say which one is preferred (or neither)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class PairwiseJudge(Protocol):
    """What `AudioOnlineDPOTrainer(judge=...)` calls.

    `judge(prompts, completions_a, completions_b, **columns)` gets one prompt and two completion texts per row, plus
    the dataset's other columns (`text`, `keywords`, ...), one value per prompt. It returns, per prompt, `0` when
    completion a is preferred, `1` when b is, or `None` when it has no preference (the pair then carries no loss).
    """

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]: ...


class RewardFunctionJudge:
    """Prefers the completion a reward function scores higher; equal scores give no preference.

    `reward_func` has TRL's reward-function signature: `reward_func(prompts=..., completions=..., **columns)`
    returning one float per completion.
    """

    def __init__(self, reward_func: Callable[..., list[float]]):
        self.reward_func = reward_func

    def __call__(
        self, prompts: list[Any], completions_a: list[str], completions_b: list[str], **columns: Any
    ) -> list[int | None]:
        scores_a = self.reward_func(prompts=prompts, completions=completions_a, **columns)
        scores_b = self.reward_func(prompts=prompts, completions=completions_b, **columns)
        return [0 if a > b else 1 if b > a else None for a, b in zip(scores_a, scores_b)]
