"""Reward functions on literal inputs with hand-worked values, against jiwer on random pairs, against
`evaluate_transcripts` row by row on the bundled transcripts, and their registry."""

import json
import math
import pickle
import random
from pathlib import Path

import jiwer
import pytest
from trl.trainer.utils import get_callable_name

from trl_audio.evaluation import evaluate_transcripts
from trl_audio.rewards import (
    REWARD_FUNCS,
    NormalizedReward,
    bias_wer_reward,
    bias_word_recall_reward,
    cer_reward,
    completion_text,
    get_reward_funcs,
    insertion_penalty_reward,
    keyword_recall,
    unbiased_wer_reward,
    wer_reward,
    word_count_reward,
    word_error_rate,
)
from trl_audio.text import bias_word_set, normalize


METADATA = Path(__file__).resolve().parents[1] / "examples/data/speech_sample/metadata.jsonl"


def test_word_error_rate_counts_edits_after_normalization():
    # reference "ada lovelace met charles babbage" (5 words); hypothesis substitutes one and deletes one: 2/5
    assert word_error_rate("Ada Lovelace met Charles.", "ada lovelace met charles babbage") == pytest.approx(1 / 5)
    assert word_error_rate("ada lovelace mat charles", "Ada Lovelace met Charles Babbage!") == pytest.approx(2 / 5)
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("hello", "") == 1.0


def test_wer_reward_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "Grace Hopper"}], [{"role": "assistant", "content": "Grace"}]]
    assert wer_reward(completions, text=["Grace Hopper", "Grace Hopper"]) == [0.0, -0.5]


def test_wer_reward_by_hand_under_both_normalizations():
    completions = ["GRACE, Hopper!", "I have 2 cats", "The colour red.", ""]
    references = ["grace hopper", "I have two cats", "the color red", "Grace Hopper"]
    # whisper: case and punctuation go; "two" -> "2" and "colour" -> "color" on both sides; "" deletes 2 of 2 words
    assert wer_reward(completions, text=references) == [0.0, 0.0, 0.0, -1.0]
    # simple: case and punctuation go; "2" for "two" is 1 substitution in 4 words, "colour" for "color" 1 in 3
    assert wer_reward(completions, text=references, normalization="simple") == pytest.approx([0, -1 / 4, -1 / 3, -1])


def test_cer_reward_by_hand_under_both_normalizations():
    completions = ["grace hoper", "2 cats", "", [{"role": "assistant", "content": "Moth."}]]
    references = ["Grace Hopper", "two cats", "moth", "moth"]
    # "grace hopper" has 12 characters, the space included: 1 deletion; "" deletes all 4 characters of "moth"
    assert cer_reward(completions, text=references) == pytest.approx([-1 / 12, 0, -1, 0])
    # simple: "two cats" (8 characters) -> "2 cats": t->2, w and o deleted, 3 edits
    assert cer_reward(completions, text=references, normalization="simple") == pytest.approx([-1 / 12, -3 / 8, -1, 0])


@pytest.mark.parametrize(
    "reward", [wer_reward, cer_reward, bias_wer_reward, unbiased_wer_reward, insertion_penalty_reward]
)
def test_rewards_without_a_reference_give_none(reward):
    # a row whose reference is None gets None, the next row its reward; a missing column gives None to every row
    rewards = reward(["a cat", "a cat"], text=[None, "a cat"], keywords=[["cat"], ["cat"]])
    assert rewards[0] is None and rewards[1] == 0.0
    assert reward(["a cat", "a dog"], keywords=[["cat"], ["cat"]]) == [None, None]


def test_keyword_recall_matches_whole_words_only():
    assert keyword_recall("Noether and Ramanujan", ["Noether", "Ramanujan", "Babbage"]) == pytest.approx(2 / 3)
    assert keyword_recall("Noetherian rings", ["Noether"]) == 0.0
    assert keyword_recall("in Tbilisi today", ["tbilisi"]) == 1.0
    assert keyword_recall("anything", []) is None


def test_bias_word_recall_reward_gives_none_without_keywords():
    rewards = bias_word_recall_reward(["Kubernetes pods", "plain words"], keywords=[["Kubernetes"], []])
    assert rewards == [1.0, None]
    assert bias_word_recall_reward(["a", "b"], keywords=[None, ["b"]]) == [None, 1.0]
    assert bias_word_recall_reward(["a", "b"]) == [None, None]  # no keywords column
    # "colour" is "color" under whisper only
    assert bias_word_recall_reward(["a nice color"], keywords=[["colour"]]) == [1.0]
    assert bias_word_recall_reward(["a nice color"], keywords=[["colour"]], normalization="simple") == [0.0]


def test_bias_and_unbiased_wer_rewards_by_hand():
    reference = "Ada Lovelace met Charles Babbage."  # bias words charles babbage (2), unbiased ada lovelace met (3)
    completions = ["Ada Lovelace met Charles Cabbage", "Ada Love Lace met Charles Babbage", "Charles Babbage", "x"]
    text = [reference, reference, "Charles Babbage", reference]
    keywords = [["Charles Babbage"], ["Charles Babbage"], ["Charles Babbage"], []]
    # row 0: babbage -> cabbage, a bias error: B-WER 1/2, U-WER 0/3
    # row 1: lovelace -> love and lace inserted, two unbiased errors: B-WER 0/2, U-WER 2/3
    # row 2: the reference holds bias words only: U-WER has no denominator (None)
    # row 3: no keywords, so no bias words (B-WER None) and U-WER = WER: x for ada, 4 deletions, 5/5
    assert bias_wer_reward(completions, text=text, keywords=keywords) == [-0.5, 0.0, 0.0, None]
    assert unbiased_wer_reward(completions, text=text, keywords=keywords) == pytest.approx([0, -2 / 3, None, -1])
    assert unbiased_wer_reward(completions, text=text, keywords=[None] * 4) == [None] * 4


def test_bias_wer_reward_follows_the_normalization():
    # whisper reads "Dr." as "doctor" on every side: no error. simple keeps "dr", a bias word (keyword "dr who")
    # that "doctor" substitutes: 1 of 2 bias words
    row = {"completions": ["Doctor Who arrived"], "text": ["Dr. Who arrived"], "keywords": [["Dr. Who"]]}
    assert bias_wer_reward(**row) == [0.0]
    assert bias_wer_reward(**row, normalization="simple") == [-0.5]


def test_insertion_penalty_reward_by_hand():
    completions = ["the cat sat on the mat", "the dog sat", "the cat", "thank you for watching", "uh the cat sat"]
    text = ["The cat sat.", "the cat sat", "the cat sat", "", "the cat sat"]
    # 3 words inserted after 3 reference words; a substitution and a deletion insert nothing; silence (an empty
    # reference) counts each of the 4 words, I / max(N, 1); whisper drops the filler "uh", simple inserts it (1 in 3)
    assert insertion_penalty_reward(completions, text=text) == [-1.0, 0.0, 0.0, -4.0, 0.0]
    simple = insertion_penalty_reward(completions, text=text, normalization="simple")
    assert simple == pytest.approx([-1, 0, 0, -4, -1 / 3])


def test_word_count_reward_and_completion_text():
    assert word_count_reward(["one two three", ""]) == [-3.0, -0.0]
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]) == "hi"


def corrupt(rng: random.Random, reference: str, substitutes: list[str], insertions: list[str]) -> str:
    """`reference` with each word kept (weight 6), substituted from `substitutes` (2), deleted (1) or followed by a
    word of `insertions` (1)."""
    hypothesis = []
    for word in reference.split():
        edits = {"keep": [word], "sub": [rng.choice(substitutes)], "del": [], "ins": [word, rng.choice(insertions)]}
        hypothesis += edits[rng.choices(list(edits), weights=[6, 2, 1, 1])[0]]
    return " ".join(hypothesis)


@pytest.mark.parametrize("normalization", ["whisper", "simple"])
def test_wer_and_cer_rewards_equal_jiwer_on_random_pairs(normalization):
    # 1,000 pairs over a small vocabulary with case, punctuation, numbers and spelling variants; seed 0
    rng = random.Random(0)
    vocab = "the The a moth Moth, cat cats. sat on mat! two 2 colour color Dr. doctor Babbage engine it's don't"
    vocab = vocab.split()
    references = [" ".join(rng.choices(vocab, k=rng.randint(1, 8))) for _ in range(1000)]
    hypotheses = [corrupt(rng, r, vocab, vocab) for r in references]
    hyp = [normalize(h, normalization) for h in hypotheses]
    ref = [normalize(r, normalization) for r in references]
    # every kind of error occurs, or the comparison would prove less than it seems
    counts = jiwer.process_words(ref, hyp)
    assert min(counts.substitutions, counts.deletions, counts.insertions) > 50
    assert sum(not h for h in hyp) > 0 and all(ref)
    wer = wer_reward(hypotheses, text=references, normalization=normalization)
    cer = cer_reward(hypotheses, text=references, normalization=normalization)
    assert wer == pytest.approx([-jiwer.wer(r, h) for r, h in zip(ref, hyp)])
    assert cer == pytest.approx([-jiwer.cer(r, h) for r, h in zip(ref, hyp)])


def test_bias_and_unbiased_wer_rewards_equal_evaluate_transcripts_row_by_row():
    # the bundled transcripts with their keywords, plus a row without keywords and one of bias words only;
    # hypotheses with words substituted, deleted, or followed by one of the row's bias words (seed 1)
    rows = [json.loads(line) for line in METADATA.read_text().splitlines()]
    references = [r["text"] for r in rows] + ["The moth flew away.", "Grace Hopper!"]
    keywords = [r["keywords"] for r in rows] + [[], ["Grace Hopper"]]
    vocab = " ".join(references).split()
    rng = random.Random(1)
    hypotheses = [corrupt(rng, r, vocab, " ".join(k).split() or vocab) for r, k in zip(references, keywords)]
    bias = bias_wer_reward(hypotheses, text=references, keywords=keywords)
    unbiased = unbiased_wer_reward(hypotheses, text=references, keywords=keywords)
    for h, r, k, b, u in zip(hypotheses, references, keywords, bias, unbiased):
        expected = evaluate_transcripts([h], [r], [k])
        assert b == (None if math.isnan(expected["b_wer"]) else pytest.approx(-expected["b_wer"]))
        assert u == (None if math.isnan(expected["u_wer"]) else pytest.approx(-expected["u_wer"]))
    assert (bias[-2], unbiased[-1]) == (None, None)  # no bias word; bias words only
    assert sum(b is not None and b < 0 for b in bias) > 10 and sum(u is not None and u < 0 for u in unbiased) > 10
    # summed back, the row rates give the corpus's error counts: -reward x the row's bias (unbiased) words
    corpus = evaluate_transcripts(hypotheses, references, keywords)
    bias_words = [sum(w in bias_word_set(k) for w in normalize(r).split()) for r, k in zip(references, keywords)]
    unbiased_words = [len(normalize(r).split()) - n for r, n in zip(references, bias_words)]
    assert sum(-(b or 0) * n for b, n in zip(bias, bias_words)) == pytest.approx(corpus["b_errors"])
    assert sum(-(u or 0) * n for u, n in zip(unbiased, unbiased_words)) == pytest.approx(corpus["u_errors"])


def test_get_reward_funcs_names_every_function_as_the_trainer_logs_it():
    names = list(REWARD_FUNCS)
    assert names == ["wer", "cer", "bias_wer", "unbiased_wer", "bias_word_recall", "insertion_penalty", "word_count"]
    # the default normalization gives the functions themselves, under the names the logs have always used
    default = get_reward_funcs(names)
    assert default == [REWARD_FUNCS[name] for name in names]
    assert [get_callable_name(f) for f in default] == [f"{name}_reward" for name in names]
    # another normalization gets its own log keys; word_count reads no normalized text and stays as it is
    simple = get_reward_funcs(names, normalization="simple")
    expected = [f"{name}_reward_simple" for name in names[:-1]] + ["word_count_reward"]
    assert [get_callable_name(f) for f in simple] == [f.__name__ for f in simple] == expected
    assert all(isinstance(f, NormalizedReward) for f in simple[:-1]) and simple[-1] is word_count_reward


def test_reward_funcs_take_the_trainer_s_arguments():
    # the trainer passes prompts, completion_ids, trainer_state and every dataset column, each repeated per sample
    columns = {
        "prompts": ["p", "p"],
        "completion_ids": [[1], [2]],
        "trainer_state": None,
        "text": ["I have two cats", "I have two cats"],
        "keywords": [["cats"], ["cats"]],
        "bias_words": [["cats", "dogs"], ["cats", "dogs"]],
    }
    completions = ["I have 2 cats", "I have 2 cats"]
    for how in ("whisper", "simple"):
        for func in get_reward_funcs(list(REWARD_FUNCS), normalization=how):
            rewards = func(completions=completions, **columns)
            assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards), func
    # the normalization reaches the function: "2" for "two" is 1 error in 4 words under simple only
    assert get_reward_funcs(["wer"])[0](completions=completions, **columns) == [0.0, 0.0]
    simple_wer = get_reward_funcs(["wer"], normalization="simple")[0]
    assert simple_wer(completions=completions, **columns) == [-0.25, -0.25]
    # picklable, as TRL's reward forms are (data loader workers, multiprocessing)
    assert pickle.loads(pickle.dumps(simple_wer))(completions=completions, **columns) == [-0.25, -0.25]


def test_get_reward_funcs_rejects_unknown_names_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"reward_funcs must be one or more of \['wer', 'cer', .*'word_count'\]"):
        get_reward_funcs(["wer", "bias_werr"])
    with pytest.raises(ValueError, match="Did you mean 'bias_wer' for 'bias_werr'"):
        get_reward_funcs(["bias_werr"])
    with pytest.raises(ValueError, match="reward_funcs"):
        get_reward_funcs([])
    with pytest.raises(ValueError, match=r"Unknown normalization 'Whisper': choose one of \['whisper', 'simple'\]"):
        get_reward_funcs(["wer"], normalization="Whisper")
