import pytest

from trl_audio.rewards import (
    bias_word_recall_reward,
    completion_text,
    keyword_recall,
    wer_reward,
    word_count_reward,
    word_error_rate,
)


def test_word_error_rate_counts_edits_after_normalization():
    # reference "ada lovelace met charles babbage" (5 words); hypothesis substitutes one and deletes one: 2/5
    assert word_error_rate("Ada Lovelace met Charles.", "ada lovelace met charles babbage") == pytest.approx(1 / 5)
    assert word_error_rate("ada lovelace mat charles", "Ada Lovelace met Charles Babbage!") == pytest.approx(2 / 5)
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("hello", "") == 1.0


def test_wer_reward_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "Grace Hopper"}], [{"role": "assistant", "content": "Grace"}]]
    assert wer_reward(completions, text=["Grace Hopper", "Grace Hopper"]) == [0.0, -0.5]


def test_keyword_recall_matches_whole_words_only():
    assert keyword_recall("Noether and Ramanujan", ["Noether", "Ramanujan", "Babbage"]) == pytest.approx(2 / 3)
    assert keyword_recall("Noetherian rings", ["Noether"]) == 0.0
    assert keyword_recall("in Tbilisi today", ["tbilisi"]) == 1.0
    assert keyword_recall("anything", []) is None


def test_bias_word_recall_reward_gives_none_without_keywords():
    rewards = bias_word_recall_reward(["Kubernetes pods", "plain words"], keywords=[["Kubernetes"], []])
    assert rewards == [1.0, None]


def test_word_count_reward_and_completion_text():
    assert word_count_reward(["one two three", ""]) == [-3.0, -0.0]
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
