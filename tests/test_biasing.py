"""Contextual-biasing lists (`trl_audio.biasing`) on literal transcripts: hits, distractors, probabilities, seeding."""

import random
import re

import pytest

from trl_audio.biasing import (
    Biaser,
    BiasingConfig,
    PiecePool,
    normalize_word,
    read_word_file,
    sample_bias_words,
    split_spans,
    tag_text,
    word_set,
)
from trl_audio.prompts import TRANSCRIBE_PROMPT, make_instruction, make_prompt


TEXT = "Ada Lovelace wrote notes on the Analytical Engine, long before modern computers existed."
# Distractor candidates: the first five share a word with TEXT (in another case or with punctuation), the rest do not.
POOL = ["engine", "ADA", "notes.", "the relay", "Difference Engine", "Babbage", "moth", "relay", "Grace Hopper"]
OUTSIDE_TEXT = {"Babbage", "moth", "relay", "Grace Hopper"}
OTHER_ROWS = [
    "Charles Babbage designed a mechanical calculator called the Difference Engine.",
    "Grace Hopper once found a moth trapped inside a relay of the computer.",
    "Alan Turing asked whether machines can think.",
]


def occurs_in(piece, text):
    return re.search(rf"(?<!\w){re.escape(piece)}(?!\w)", text, re.IGNORECASE) is not None


def test_prompt_texts():
    assert make_instruction(["Lovelace", "Babbage"]) == (
        "Transcribe the audio clip into text. Pay attention to these words: Lovelace, Babbage."
    )
    assert make_instruction([]) == TRANSCRIBE_PROMPT
    assert make_instruction(["moth"], "Write down what is said.") == (
        "Write down what is said. Pay attention to these words: moth."
    )
    assert make_prompt("Hi.") == [
        {"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Hi."}]}
    ]


def test_word_normalization():
    assert normalize_word("Babbage,") == "babbage"
    assert normalize_word('"Engine."') == "engine"
    assert normalize_word("don't") == "don't"
    assert normalize_word("--") == ""
    assert word_set("The moth, the MOTH -- gone.") == {"the", "moth", "gone"}


@pytest.mark.parametrize("max_len", [1, 3])
def test_spans_cover_the_transcript_in_order(max_len):
    for seed in range(50):
        spans = split_spans(10, max_len, random.Random(seed))
        assert spans[0][0] == 0 and spans[-1][1] == 10
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(1 <= end - start <= max_len for start, end in spans)


def test_hit_prob_one_lists_only_pieces_of_the_transcript():
    config = BiasingConfig(bias_prob=1.0, hit_prob=1.0, max_piece_len=3, max_num=4)
    lengths = set()
    for seed in range(200):
        sample = sample_bias_words(TEXT, random.Random(seed), config, PiecePool(POOL))
        assert 1 <= len(sample.bias_words) <= 4
        assert sorted(sample.bias_words) == sorted(sample.hits)
        for piece in sample.bias_words:
            assert occurs_in(piece, TEXT), (seed, piece)
            assert piece == piece.strip(",.") and len(piece.split()) <= 3
            lengths.add(len(piece.split()))
    assert lengths == {1, 2, 3}


def test_hit_prob_zero_draws_distractors_sharing_no_word_with_the_transcript():
    config = BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=3)
    drawn = set()
    for seed in range(200):
        sample = sample_bias_words(TEXT, random.Random(seed), config, PiecePool(POOL))
        assert sample.hits == [] and len(sample.bias_words) == len(set(sample.bias_words)) <= 3
        assert not any(word_set(piece) & word_set(TEXT) for piece in sample.bias_words), (seed, sample.bias_words)
        drawn |= set(sample.bias_words)
    assert drawn == OUTSIDE_TEXT


def test_bias_prob_zero_gives_plain_prompts():
    config = BiasingConfig(bias_prob=0.0, hit_prob=1.0, max_num=5)
    for seed in range(100):
        sample = sample_bias_words(TEXT, random.Random(seed), config, PiecePool(POOL))
        assert sample.bias_words == [] and sample.text == TEXT
        assert sample.instruction() == TRANSCRIBE_PROMPT


def test_bias_prob_is_the_share_of_biased_rows():
    # Seeds 0..1999 fixed: deterministic. Were it random, +-0.05 is 4.5 standard deviations (odds ~1e-5).
    config = BiasingConfig(bias_prob=0.5, hit_prob=1.0)
    biased = [bool(sample_bias_words(TEXT, random.Random(s), config, PiecePool()).bias_words) for s in range(2000)]
    assert 0.45 < sum(biased) / len(biased) < 0.55


def test_same_seed_gives_the_same_lists_and_pool_learns_from_earlier_rows():
    def run(seed):
        biaser = Biaser(BiasingConfig(bias_prob=1.0, hit_prob=0.5, max_num=3))
        return [biaser(text, random.Random(f"{seed}-{i}")).bias_words for i, text in enumerate([TEXT, *OTHER_ROWS])]

    first = run(0)
    assert first == run(0)
    assert first != run(1)
    biaser = Biaser(BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=3))
    rows = [TEXT, *OTHER_ROWS]
    for i, text in enumerate(rows):
        words = biaser(text, random.Random(i)).bias_words
        earlier = set().union(*map(word_set, rows[:i]))
        assert all(word_set(w) <= earlier and not word_set(w) & word_set(text) for w in words), (text, words)
        if i == 0:
            assert words == []  # no earlier row, no word file: nothing to draw distractors from


def test_tag_wraps_listed_pieces_and_their_occurrences_in_the_text():
    assert tag_text("Ada met Ada, then ada.", ["Ada"], "*") == "*Ada* met *Ada*, then *ada*."
    assert tag_text("the Analytical Engine ran", ["Analytical Engine", "Engine"], "*") == (
        "the *Analytical Engine* ran"
    )
    config = BiasingConfig(bias_prob=1.0, hit_prob=1.0, max_num=2, tag="*")
    for seed in range(20):
        sample = sample_bias_words(TEXT, random.Random(seed), config, PiecePool())
        assert sample.text.replace("*", "") == TEXT
        assert all(
            w.startswith("*") and w.endswith("*") and f"*{w.strip('*')}*" in sample.text for w in sample.bias_words
        )


def test_word_file_supplies_the_distractors(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("Babbage\t120\n\nmoth\nengine\nthe relay\n", encoding="utf-8")
    assert read_word_file(str(path)) == ["Babbage", "moth", "engine", "the relay"]
    biaser = Biaser(BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=2, word_file=str(path)))
    drawn = set()
    for seed in range(100):
        drawn |= set(biaser(TEXT, random.Random(seed)).bias_words)
    assert drawn == {"Babbage", "moth"}
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_word_file(str(tmp_path / "missing.txt"))
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no words"):
        read_word_file(str(tmp_path / "blank.txt"))


def test_piece_pool_keeps_the_latest_pieces():
    pool = PiecePool(capacity=3)
    pool.add(["a", "b", "c", "d", "e"])
    assert sorted(pool.items) == ["c", "d", "e"]
    assert pool.sample(random.Random(0), 5, exclude_words={"d"}, taken={"C"}) == ["e"]


@pytest.mark.parametrize(
    "kwargs", [{"bias_prob": 1.5}, {"hit_prob": -0.1}, {"max_num": 0}, {"max_piece_len": 1.5}], ids=str
)
def test_config_rejects_out_of_range_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BiasingConfig(**kwargs)
