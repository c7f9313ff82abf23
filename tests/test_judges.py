"""Pairwise judges (`trl_audio.judges`) on literal completions."""

import math

from trl_audio.judges import RewardFunctionJudge
from trl_audio.rewards import wer_reward


def test_reward_function_judge_prefers_higher_reward_and_abstains_on_ties():
    judge = RewardFunctionJudge(wer_reward)
    preferences = judge(
        ["p1", "p2", "p3"], ["ada lovelace", "x", "same"], ["ada", "ada lovelace", "same"], text=["Ada Lovelace"] * 3
    )
    assert preferences == [0, 1, None]
    assert not math.isnan(wer_reward(["a"], text=["a"])[0])
