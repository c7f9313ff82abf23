"""Contextual-biasing lists (`trl_audio.biasing`) on literal transcripts: hits, distractors, probabilities, seeding."""

import random
import re

import pytest

from trl_audio.biasing import (
    HIT_SOURCES,
    Biaser,
    BiasingConfig,
    read_word_file,
    sample_bias_words,
    sample_keyword_bias,
    split_spans,
    tag_text,
)
from trl_audio.prompts import TRANSCRIBE_PROMPT
from trl_audio.text import PiecePool, word_set


TEXT = "Ada Lovelace wrote notes on the Analytical Engine, long before modern computers existed."
# Distractor candidates: the first five share a word with TEXT (in another case or with punctuation), the rest do not.
POOL = ["engine", "ADA", "notes.", "the relay", "Difference Engine", "Babbage", "moth", "relay", "Grace Hopper"]
OUTSIDE_TEXT = {"Babbage", "moth", "relay", "Grace Hopper"}
OTHER_ROWS = [
    "Charles Babbage designed a mechanical calculator called the Difference Engine.",
    "Grace Hopper once found a moth trapped inside a relay of the computer.",
    "Alan Turing asked whether machines can think.",
]
KEYWORDS = ["Ada Lovelace", "Analytical Engine"]
# (transcript, keywords) rows: "Difference Engine" shares "engine" with TEXT, so it is never a distractor for TEXT.
KEYWORD_ROWS = [
    (OTHER_ROWS[0], ["Charles Babbage", "Difference Engine"]),
    (OTHER_ROWS[1], ["Grace Hopper", "moth"]),
    (OTHER_ROWS[2], ["Alan Turing"]),
    (TEXT, KEYWORDS),
]


def occurs_in(piece, text):
    return re.search(rf"(?<!\w){re.escape(piece)}(?!\w)", text, re.IGNORECASE) is not None


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


def test_default_hit_source_gives_the_lists_of_before_hit_source_existed():
    # Literal lists drawn by the code before `hit_source` was added (same config, same seeds).
    assert BiasingConfig().hit_source == "transcript"
    biaser = Biaser(BiasingConfig(bias_prob=1.0, hit_prob=0.5, max_piece_len=2, max_num=3))
    lists = [biaser(text, random.Random(f"7-{i}")).bias_words for i, text in enumerate([TEXT, *OTHER_ROWS])]
    assert lists == [
        ["modern computers", "Analytical", "on the"],
        ["Babbage designed", "modern computers", "before"],
        ["modern computers"],
        ["calculator"],
    ]
    # The keywords argument is ignored in this mode.
    biaser = Biaser(BiasingConfig(bias_prob=1.0, hit_prob=0.5, max_piece_len=2, max_num=3))
    assert [
        biaser(text, random.Random(f"7-{i}"), ["moth"]).bias_words for i, text in enumerate([TEXT, *OTHER_ROWS])
    ] == (lists)


def run_keyword_rows(config, seed=0, rows=KEYWORD_ROWS):
    biaser = Biaser(config)
    return [biaser(text, random.Random(f"{seed}-{i}"), keywords) for i, (text, keywords) in enumerate(rows)]


def test_keyword_hits_are_whole_keywords_and_distractors_are_earlier_rows_keywords():
    config = BiasingConfig(bias_prob=1.0, hit_prob=1.0, max_num=3, hit_source="keywords")
    distractors = set()
    for seed in range(100):
        for i, ((text, keywords), sample) in enumerate(zip(KEYWORD_ROWS, run_keyword_rows(config, seed))):
            earlier = {k for _, row_keywords in KEYWORD_ROWS[:i] for k in row_keywords}
            assert sorted(sample.hits) == sorted(keywords)  # hit_prob 1, no more keywords than max_num
            assert 1 <= len(sample.bias_words) <= 3
            for word in sample.bias_words:
                if word not in sample.hits:
                    assert word in earlier and not word_set(word) & word_set(text), (seed, text, word)
                    distractors.add(word)
    # Every earlier keyword that shares no word with its row was drawn; "Difference Engine" never for TEXT.
    assert distractors == {"Charles Babbage", "Difference Engine", "Grace Hopper", "moth", "Alan Turing"}
    assert not any(
        "Difference Engine" in s.bias_words for seed in range(100) for s in run_keyword_rows(config, seed)[3:]
    )


def test_keyword_lists_hold_at_most_max_num_entries_and_hit_prob_zero_only_distractors():
    keywords = ["Ada Lovelace", "Analytical Engine", "notes", "modern computers", "ada lovelace"]
    config = BiasingConfig(bias_prob=1.0, hit_prob=1.0, max_num=2, hit_source="keywords")
    for seed in range(50):
        sample = sample_keyword_bias(TEXT, keywords, random.Random(seed), config, PiecePool(POOL))
        assert len(sample.bias_words) == 2 and set(sample.bias_words) <= set(keywords[:4])  # "ada lovelace" a repeat
    config = BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=3, hit_source="keywords")
    drawn = set()
    for seed in range(200):
        sample = sample_keyword_bias(TEXT, KEYWORDS, random.Random(seed), config, PiecePool(POOL))
        assert sample.hits == [] and 1 <= len(sample.bias_words) <= 3
        drawn |= set(sample.bias_words)
    assert drawn == OUTSIDE_TEXT


def test_keyword_hit_prob_is_the_share_of_listed_keywords():
    # Seeds 0..1999 fixed: deterministic. Were it random, +-0.05 around 0.3 is 4.9 standard deviations (odds ~1e-6).
    config = BiasingConfig(bias_prob=1.0, hit_prob=0.3, max_num=1, hit_source="keywords")
    listed = [
        bool(sample_keyword_bias(TEXT, ["Ada"], random.Random(s), config, PiecePool()).hits) for s in range(2000)
    ]
    assert 0.25 < sum(listed) / len(listed) < 0.35


def test_rows_without_keywords_get_the_plain_prompt_and_feed_no_distractors():
    config = BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=3, hit_source="keywords")
    rows = [(OTHER_ROWS[2], []), (OTHER_ROWS[1], ["Grace Hopper"]), (TEXT, ["  ", ""]), (OTHER_ROWS[0], ["Babbage"])]
    samples = run_keyword_rows(config, rows=rows)
    assert [s.bias_words for s in samples[:3]] == [[], [], []]  # row 1: nothing earlier to draw from
    assert samples[2].instruction() == TRANSCRIBE_PROMPT and samples[2].text == TEXT
    assert samples[3].bias_words == ["Grace Hopper"]  # not "Alan Turing": a row's transcript is never a source


def test_keyword_mode_is_seeded_tags_phrases_and_reads_the_word_file(tmp_path):
    config = BiasingConfig(bias_prob=0.8, hit_prob=0.7, max_num=3, hit_source="keywords")
    first = [s.bias_words for s in run_keyword_rows(config, seed=0)]
    assert first == [s.bias_words for s in run_keyword_rows(config, seed=0)]
    assert any(first != [s.bias_words for s in run_keyword_rows(config, seed=seed)] for seed in range(1, 5))

    tagged = BiasingConfig(bias_prob=1.0, hit_prob=1.0, max_num=2, hit_source="keywords", tag="*")
    sample = sample_keyword_bias(TEXT, KEYWORDS, random.Random(0), tagged, PiecePool())
    assert sorted(sample.bias_words) == ["*Ada Lovelace*", "*Analytical Engine*"]
    assert (
        sample.text == "*Ada Lovelace* wrote notes on the *Analytical Engine*, long before modern computers existed."
    )

    path = tmp_path / "words.txt"
    path.write_text("Babbage\nmoth\nEngine\n", encoding="utf-8")
    config = BiasingConfig(bias_prob=1.0, hit_prob=0.0, max_num=2, word_file=str(path), hit_source="keywords")
    drawn = {w for seed in range(50) for s in run_keyword_rows(config, seed) for w in s.bias_words}
    assert drawn == {"Babbage", "moth", "Engine"}  # only the file, never other rows' keywords
    assert not any("Engine" in s.bias_words for seed in range(50) for s in run_keyword_rows(config, seed)[::3])


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


@pytest.mark.parametrize(
    "kwargs",
    [{"bias_prob": 1.5}, {"hit_prob": -0.1}, {"max_num": 0}, {"max_piece_len": 1.5}, {"hit_source": "rare_words"}],
    ids=str,
)
def test_config_rejects_out_of_range_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BiasingConfig(**kwargs)
    assert HIT_SOURCES == ("transcript", "keywords")
    with pytest.raises(ValueError, match=r"hit_source must be one of \['transcript', 'keywords'\], got 'Keywords'"):
        BiasingConfig(hit_source="Keywords")
