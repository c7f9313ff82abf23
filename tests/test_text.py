"""Words and normalization (`trl_audio.text`): the scoring form of transcripts and the light form of words."""

import random

import pytest

from trl_audio.text import (
    NORMALIZERS,
    PiecePool,
    bias_word_set,
    normalize,
    normalize_simple,
    normalize_transcript,
    normalize_word,
    word_set,
)


def test_the_two_normalizations_differ_where_documented():
    # Scoring (Whisper English): case, punctuation, spelling variants, contractions and numbers are folded
    assert normalize_transcript("Dr. Smith's  colour, 2 cats!") == "doctor smith is color 2 cats"
    # Building lists: lower case and end punctuation only; the spelling stays as written
    assert [normalize_word(w) for w in "Dr. Smith's colour,".split()] == ["dr", "smith's", "colour"]
    assert bias_word_set(["Dr. Who", "colour"]) == {"doctor", "who", "color"}


def test_word_normalization():
    assert normalize_word("Babbage,") == "babbage"
    assert normalize_word('"Engine."') == "engine"
    assert normalize_word("don't") == "don't"
    assert normalize_word("--") == ""
    assert word_set("The moth, the MOTH -- gone.") == {"the", "moth", "gone"}


def test_piece_pool_keeps_the_latest_pieces():
    pool = PiecePool(capacity=3)
    pool.add(["a", "b", "c", "d", "e"])
    assert sorted(pool.items) == ["c", "d", "e"]
    assert pool.sample(random.Random(0), 5, exclude_words={"d"}, taken={"C"}) == ["e"]


def test_scoring_normalizations_by_name():
    # whisper folds numbers, contractions and spelling; simple only lowers case and removes punctuation
    assert normalize("Two cats, don't!") == normalize_transcript("Two cats, don't!") == "2 cats do not"
    assert normalize("Two cats, don't!", "simple") == normalize_simple("Two cats, don't!") == "two cats dont"
    assert normalize_simple("Dr. Smith's  colour, “well-known”\n2 cats!") == "dr smiths colour wellknown 2 cats"
    assert normalize_simple(" ... ") == ""
    assert set(NORMALIZERS) == {"whisper", "simple"}
    assert bias_word_set(["Dr. Who", "colour"], "simple") == {"dr", "who", "colour"}
    with pytest.raises(ValueError, match=r"Unknown normalization 'plain': choose one of \['whisper', 'simple'\]"):
        normalize("a", "plain")
