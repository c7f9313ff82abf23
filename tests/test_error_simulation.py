"""Simulated preference pairs (`trl_audio.error_simulation`): the realised WER (jiwer) of `rejected` hits the range."""

import math
import random

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_audio.error_simulation import (
    COMMON_WORDS,
    ErrorSimulationConfig,
    ErrorSimulator,
    inject_errors,
    num_errors_for,
    simulate_rejected,
)
from trl_audio.text import word_set


VOCAB = [f"w{i}" for i in range(300)]
VOCABULARY = ["lighthouse", "keeper", "violin", "harbour", "lantern", "copper", "meadow", "quartz"]


def make_rows(n, seed=0):
    """`n` transcripts of 8 to 30 words drawn from VOCAB, with their word counts."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCAB, k=rng.randint(8, 30))) for _ in range(n)]


def reachable(num_words, low, high):
    return math.ceil(low * num_words - 1e-9) <= math.floor(high * num_words + 1e-9)


def test_num_errors_literal_cases():
    rng = random.Random(0)
    assert {num_errors_for(10, (0.1, 0.25), rng) for _ in range(200)} == {1, 2}
    assert {num_errors_for(20, (0.25, 0.25), rng) for _ in range(20)} == {5}
    assert num_errors_for(3, (0.1, 0.25), rng) == 1  # 1/3 is nearer the range than 0/3
    assert num_errors_for(2, (0.1, 0.25), rng) == 1  # 0/2 is nearer, but a range without 0 needs one error
    assert num_errors_for(2, (0.0, 0.2), rng) == 0


@pytest.mark.parametrize(
    "weights",
    [(0.1, 0.1, 0.05), (1, 1, 1), (0, 1, 1)],
    ids=["reference-fork-defaults", "equal", "delete+insert"],
)
def test_realised_wer_falls_in_error_range_over_many_rows(weights):
    config = ErrorSimulationConfig((0.1, 0.25), *weights)
    simulator = ErrorSimulator(config)
    rates = []
    for i, text in enumerate(make_rows(300)):
        rejected = simulator(text, random.Random(i))
        rate = jiwer.wer(text, rejected)
        if reachable(len(text.split()), 0.1, 0.25):
            assert 0.1 - 1e-9 <= rate <= 0.25 + 1e-9, (text, rejected, rate)
        rates.append(rate)
    assert 0.13 < sum(rates) / len(rates) < 0.22  # spread over the range, not stuck at one end


@pytest.mark.parametrize("op", ["substitute", "delete", "insert"])
def test_each_operation_alone(op):
    weights = {"substitute": (1, 0, 0), "delete": (0, 1, 0), "insert": (0, 0, 1)}[op]
    config = ErrorSimulationConfig((0.2, 0.4), *weights)
    for i, text in enumerate(make_rows(100, seed=1)):
        rejected = simulate_rejected(text, random.Random(i), config, VOCABULARY)
        out = jiwer.process_words(text, rejected)
        counts = {"substitute": out.substitutions, "delete": out.deletions, "insert": out.insertions}
        assert counts[op] > 0 and sum(counts.values()) == counts[op], (op, text, rejected)
        if reachable(len(text.split()), 0.2, 0.4):
            assert 0.2 - 1e-9 <= out.wer <= 0.4 + 1e-9
        new_words = word_set(rejected) - word_set(text)
        assert new_words <= set(VOCABULARY), new_words  # substitutes and insertions come from the vocabulary


def test_inject_errors_literal():
    rng = random.Random(0)
    assert inject_errors("a b c d", 4, rng, (0, 1, 0)) == ""
    assert inject_errors("a b c d", 0, rng) == "a b c d"
    inserted = inject_errors("a b", 2, rng, (0, 0, 1), ["violin"])
    assert inserted == "a violin b violin"
    substituted = inject_errors("the moth flew", 3, rng, (1, 0, 0), ["moth", "the", "lantern"])
    assert substituted == "lantern lantern lantern"  # never a word of the transcript itself
    with pytest.raises(ValueError, match="Cannot inject 3 errors into a 2-word transcript"):
        inject_errors("a b", 3, rng)


def test_substitutes_fall_back_to_common_words():
    rejected = inject_errors("zebra yak", 2, random.Random(0), (1, 0, 0))
    assert set(rejected.split()) <= set(COMMON_WORDS) and jiwer.process_words("zebra yak", rejected).substitutions == 2
    everything = " ".join(COMMON_WORDS)
    assert inject_errors(everything, 1, random.Random(0), (1, 0, 0)).count("uh0") == 1


def test_same_seed_same_rejected_and_vocabulary_from_earlier_rows():
    rows = make_rows(20, seed=2)
    config = ErrorSimulationConfig((0.2, 0.3), 1, 0, 1)

    def run(seed):
        simulator = ErrorSimulator(config)
        return [simulator(text, random.Random(f"{seed}-{i}")) for i, text in enumerate(rows)]

    first = run(0)
    assert first == run(0) and first != run(1)
    earlier = set()
    for text, rejected in zip(rows, first):
        if earlier:  # substitutes are words of earlier rows once there are some
            assert word_set(rejected) - word_set(text) <= earlier
        earlier |= word_set(text)


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", "c", "the", "moth", "Moth,"]), min_size=1, max_size=25),
    low=st.floats(0.0, 1.0),
    width=st.floats(0.0, 1.0),
    seed=st.integers(0, 10**6),
)
def test_realised_wer_property(words, low, width, seed):
    """Any transcript, range and operation mix: the WER is in range whenever the word count can express it."""
    high = min(1.0, low + width)
    text = " ".join(words)
    rng = random.Random(seed)
    config = ErrorSimulationConfig((low, high), rng.random(), rng.random(), rng.random() + 0.01)
    rejected = simulate_rejected(text, rng, config, ["lantern", "moth"])
    rate = jiwer.wer(text, rejected)
    if reachable(len(words), low, high):
        assert low - 1e-9 <= rate <= high + 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"error_range": (0.3, 0.1)}, "error_range"),
        ({"error_range": (0.1, 1.5)}, "error_range"),
        ({"error_range": (0.1,)}, "error_range"),
        ({"substitute_prob": 0, "delete_prob": 0, "insert_prob": 0}, "at least one > 0"),
        ({"delete_prob": -1}, "must be >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ErrorSimulationConfig(**kwargs)


def test_single_number_error_range():
    assert ErrorSimulationConfig(error_range=0.2).error_range == (0.2, 0.2)
    assert ErrorSimulationConfig(error_range=[0.1, 0.3]).error_range == (0.1, 0.3)


# ---------------------------------------------------------------- targeted: a listed rare word swapped


SURNAMES = ["Okafor", "Okonkwo", "Lovelace", "Babbage", "Nakamura", "Nakagawa", "Fitzgerald", "Fitzpatrick"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(VOCABULARY), min_size=3, max_size=12),
    st.lists(st.sampled_from(SURNAMES), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(SURNAMES), min_size=1, max_size=4, unique=True),
    st.integers(0, 10**6),
)
def test_bias_substitution_differs_exactly_at_a_listed_rare_word(words, keywords, listed, seed):
    """Over many transcripts, keyword sets, lists and seeds: with `bias_substitute_prob=1`, where the row allows a
    swap, `rejected` differs from `chosen` in exactly one word position, where `chosen` holds one of the row's keywords
    and `rejected` a word of its list absent from `chosen`; where it does not, the ordinary errors are injected."""
    rng = random.Random(seed)
    chosen_words = words[:]
    for keyword in keywords:  # the keywords occur in the transcript, one with a comma after it
        chosen_words.insert(rng.randrange(len(chosen_words) + 1), keyword)
    chosen_words[-1] += "."
    chosen = " ".join(chosen_words)
    simulator = ErrorSimulator(ErrorSimulationConfig(bias_substitute_prob=1.0))
    rejected = simulator(chosen, random.Random(seed), keywords, listed)
    substitutes = [w for w in listed if w.lower() not in word_set(chosen)]
    if not substitutes:  # nothing to swap in: ordinary errors, at the configured rate
        assert rejected != chosen
        return
    a, b = chosen.split(), rejected.split()
    assert len(a) == len(b)
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(differing) == 1
    before, after = a[differing[0]].rstrip("."), b[differing[0]].rstrip(".")
    assert before in keywords and after in substitutes


def test_bias_substitution_picks_the_closest_spelling_and_keeps_punctuation():
    simulator = ErrorSimulator(ErrorSimulationConfig(bias_substitute_prob=1.0))
    rejected = simulator(
        "The camera was designed by Emma Okafor.", random.Random(0), ["Okafor"], ["Lovelace", "Okonkwo"]
    )
    assert rejected == "The camera was designed by Emma Okonkwo."


def test_without_bias_substitution_the_simulation_and_its_draws_are_unchanged():
    """`bias_substitute_prob=0` draws nothing more: the same rejected sides as `simulate_rejected` with the same
    vocabulary, row after row."""
    config = ErrorSimulationConfig(error_range=(0.1, 0.3))
    simulator = ErrorSimulator(config)
    vocabulary = []
    for index, text in enumerate(make_rows(50)):
        expected = simulate_rejected(text, random.Random(index), config, vocabulary[-2000:])
        assert simulator(text, random.Random(index), ["w1"], ["w2", "w3"]) == expected
        vocabulary += text.split()
