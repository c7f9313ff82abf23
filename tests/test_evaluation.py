"""WER / B-WER / U-WER on hand-worked transcripts, and batched greedy transcription on a tiny Phi-4-MM."""

import math
from pathlib import Path

import jiwer
import pytest

from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.audio_utils import AudioLoadError
from trl_audio.evaluation import evaluate_transcripts, transcribe, utterance_table
from trl_audio.testing import build_tiny_phi4mm, load_tiny
from trl_audio.text import bias_word_set, normalize_transcript


TEST_TSV = Path(__file__).resolve().parents[1] / "examples/data/speech_sample/test.tsv"

# Normalized (lower case, no punctuation, "Dr." -> "doctor"), aligned by hand:
#   row 0: ada lovelace wrote notes      | ada love lace wrote notes  -> S lovelace (bias), I love/lace (unbiased)
#   row 1: a moth flew                   | moth a moth flew           -> I moth (bias)
#   row 2: grace hopper found a moth     | grace hopper found moth    -> D a (unbiased)
#   row 3: doctor smith 1843             | doctor smith 1843          -> no error
REFERENCES = ["Ada Lovelace wrote notes.", "A moth flew.", "Grace Hopper found a moth!", "Dr. Smith, 1843."]
HYPOTHESES = ["ada love lace wrote notes", "moth a moth flew", "Grace Hopper found moth", "doctor smith 1843"]
KEYWORDS = [["Ada Lovelace"], ["moth"], ["Grace Hopper", "moth"], ["Smith"]]


def test_rates_and_counts_on_hand_worked_rows():
    result = evaluate_transcripts(HYPOTHESES, REFERENCES, KEYWORDS)
    # reference words 4 + 3 + 5 + 3 = 15; bias words among them: ada lovelace | moth | grace hopper moth | smith = 7
    assert (result["ref_words"], result["bias_ref_words"], result["unbiased_ref_words"]) == (15, 7, 8)
    assert (result["substitutions"], result["deletions"], result["insertions"], result["errors"]) == (1, 1, 2, 4)
    # bias errors: lovelace substituted, moth inserted = 2; unbiased errors: love/lace inserted, a deleted = 2
    assert (result["b_errors"], result["u_errors"]) == (2, 2)
    assert result["wer"] == pytest.approx(4 / 15)
    assert result["b_wer"] == pytest.approx(2 / 7)
    assert result["u_wer"] == pytest.approx(2 / 8)
    assert result["num_rows"] == 4


def test_wer_equals_jiwer_over_the_whole_corpus():
    result = evaluate_transcripts(HYPOTHESES, REFERENCES, KEYWORDS)
    expected = jiwer.wer([normalize_transcript(r) for r in REFERENCES], [normalize_transcript(h) for h in HYPOTHESES])
    assert result["wer"] == pytest.approx(expected)


def test_wer_sums_errors_over_rows_rather_than_averaging_row_rates():
    # row rates 0/4 and 1/1 average to 0.5; the corpus rate is 1 error in 5 words
    result = evaluate_transcripts(["a b c d", "y"], ["a b c d", "x"])
    assert result["wer"] == pytest.approx(1 / 5)


def test_phrase_keywords_count_each_of_their_words_wherever_they_occur():
    assert bias_word_set(["Difference Engine", "Dr. Who"]) == {"difference", "engine", "doctor", "who"}
    # reference "... engine had an engine": both "engine"s are bias words (3 with "difference"); the second one
    # misrecognised is a bias error
    result = evaluate_transcripts(
        ["the difference engine had an ending"], ["the difference engine had an engine"], [["Difference Engine"]]
    )
    assert (result["bias_ref_words"], result["b_errors"], result["u_errors"]) == (3, 1, 0)
    # the other way round, "ending" -> "engine" is a substitution of an unbiased reference word: an unbiased error,
    # although the word written instead is a bias word (substitutions belong to their reference word)
    result = evaluate_transcripts(
        ["the difference engine had an engine"], ["the difference engine had an ending"], [["Difference Engine"]]
    )
    assert (result["bias_ref_words"], result["b_errors"], result["u_errors"]) == (2, 0, 1)


def test_empty_reference_counts_every_hypothesis_word_as_inserted():
    result = evaluate_transcripts(["hello moth", "", "a b"], ["", "", "a b"], [["moth"], [], []])
    # 2 insertions (moth is a bias word of its row) over the 2 words of the third row
    assert (result["insertions"], result["b_errors"], result["u_errors"], result["ref_words"]) == (2, 1, 1, 2)
    assert result["wer"] == pytest.approx(1.0)
    assert math.isnan(result["b_wer"])  # no reference word is a bias word
    assert result["u_wer"] == pytest.approx(1 / 2)


def test_without_keywords_everything_is_unbiased():
    result = evaluate_transcripts(HYPOTHESES, REFERENCES)
    assert math.isnan(result["b_wer"]) and result["u_wer"] == result["wer"]


def test_rows_must_match():
    with pytest.raises(ValueError, match="one of each per row"):
        evaluate_transcripts(["a"], ["a", "b"], [[], []])


@pytest.fixture(scope="module")
def small_phi4mm(tmp_path_factory):
    # "small" rather than "tiny": the tiny decoder's greedy answer is a special token for every clip (an empty
    # transcript), which would make order and batching invisible. Seed 2: seed 0's small decoder loops on one token
    # for every clip of the test split, so no two rows could be told apart either.
    return load_tiny(build_tiny_phi4mm(tmp_path_factory.mktemp("small_phi4mm"), size="small", seed=2))


@pytest.fixture(scope="module")
def clips():
    rows = list(create_audio_dataset("tsv", tsv_paths=str(TEST_TSV), biasing={"bias_prob": 1.0}))
    return [rows[0], rows[2]]  # ss_0005 and ss_0015, whose greedy transcripts differ (checked below)


def test_transcribe_gives_one_string_per_row_in_order(small_phi4mm, clips):
    model, processor = small_phi4mm
    model.train()
    batched = transcribe(model, processor, clips, batch_size=2, max_new_tokens=8)
    assert len(batched) == 2 and all(isinstance(t, str) for t in batched)
    one_by_one = [transcribe(model, processor, [row], max_new_tokens=8)[0] for row in clips]
    assert batched[0] != batched[1], "the two clips must be told apart for the order to be observable"
    # left padding and one processor call per batch change nothing; the rows come back in their order
    assert batched == one_by_one
    assert transcribe(model, processor, clips[::-1], batch_size=2, max_new_tokens=8) == batched[::-1]
    assert model.training  # given back in the mode it had


def test_transcribe_names_the_row_with_bad_audio(small_phi4mm, clips, tmp_path):
    model, processor = small_phi4mm
    bad = {**clips[0], "id": "broken_clip", "audio": str(tmp_path / "missing.flac")}
    with pytest.raises(AudioLoadError, match="broken_clip.*missing.flac"):
        transcribe(model, processor, [clips[1], bad], max_new_tokens=4)


def test_utterance_table_splits_the_spoken_bias_words_into_hit_and_missed():
    rows = [
        {"id": "a", "text": "Ada Lovelace wrote notes.", "keywords": ["Ada Lovelace", "Babbage"]},
        {"id": "b", "text": "A moth in the relay.", "keywords": []},
    ]
    table = utterance_table(rows, ["ada love lace wrote notes", "a moth in the relay"])
    # row a: "lovelace" -> "love lace" is 1 substitution + 1 insertion over 4 words; Babbage is not spoken
    assert table[0] == {
        "id": "a", "reference": "Ada Lovelace wrote notes.", "hypothesis": "ada love lace wrote notes",
        "wer": 0.5, "bias_hit": ["ada"], "bias_missed": ["lovelace"],
    }  # fmt: skip
    assert table[1]["wer"] == 0.0 and table[1]["bias_hit"] == table[1]["bias_missed"] == []
