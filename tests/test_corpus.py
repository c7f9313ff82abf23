"""Tests of the synthetic speech corpus generator (`trl_audio.corpus`): sentences, held-out split, synthesis."""

import ctypes.util
import sys

import numpy as np
import pytest

from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.corpus import SURNAMES, TEMPLATES, find_espeak, make_sentences, synthesize, words


def key(row):
    return row.template, row.keywords


def test_sentences_are_deterministic_from_the_seed():
    rows = make_sentences(300, seed=3, test_fraction=0.2)
    assert make_sentences(300, seed=3, test_fraction=0.2) == rows
    assert [key(r) for r in make_sentences(300, seed=3, test_fraction=0.2)] == [key(r) for r in rows]
    assert [r.text for r in make_sentences(300, seed=4, test_fraction=0.2)] != [r.text for r in rows]


def test_held_out_rows_are_new_combinations_of_training_words():
    rows = make_sentences(400, seed=0, test_fraction=0.2)
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    assert (len(train), len(test)) == (320, 80)
    assert rows == train + test, "train rows come first"
    assert len({r.id for r in rows}) == len({r.text for r in rows}) == 400
    train_keys = {key(r) for r in train}
    vocabulary = set().union(*(words(r.text) for r in train))
    for row in test:
        assert key(row) not in train_keys, row
        assert words(row.text) <= vocabulary, (row, words(row.text) - vocabulary)
    # the split is not degenerate: test rows use many templates and surnames
    assert len({r.template for r in test}) > len(TEMPLATES) // 2
    assert len({name for r in test for name in r.keywords}) > 30


def test_every_row_names_one_or_two_surnames_verbatim():
    for row in make_sentences(500, seed=1, test_fraction=0.1):
        assert 1 <= len(row.keywords) <= 2, row
        assert len(set(row.keywords)) == len(row.keywords), row
        for name in row.keywords:
            assert name in SURNAMES and name in row.text, row
        assert not any(c.isdigit() for c in row.text), f"{row.id}: numbers must be spelled out"
        assert 5 <= len(row.text.split()) <= 18, row


def test_too_few_sentences_for_a_test_split_raise():
    with pytest.raises(ValueError, match="Raise n or lower test_fraction"):
        make_sentences(3, seed=0, test_fraction=0.5)
    assert {r.split for r in make_sentences(3, seed=0, test_fraction=0)} == {"train"}


def test_missing_espeak_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes `import espeakng_loader` fail
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install espeakng-loader.*apt-get install espeak-ng"):
        find_espeak()


def test_synthesize_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already holds files"):
        synthesize(make_sentences(2, test_fraction=0), tmp_path)


@pytest.fixture(scope="module")
def tiny_corpora(tmp_path_factory):
    """The same 6 rows (4 train, 2 test) synthesized twice, with 1 and with 2 helper processes."""
    try:
        find_espeak()
    except RuntimeError as e:
        pytest.skip(str(e))
    rows = make_sentences(200, seed=0, test_fraction=0.2)
    rows = rows[:4] + rows[-2:]
    root = tmp_path_factory.mktemp("corpus")
    infos = [synthesize(rows, root / f"run{workers}", workers=workers) for workers in (1, 2)]
    return rows, [root / "run1", root / "run2"], infos


def test_synthesis_is_byte_identical_across_runs(tiny_corpora):
    rows, (first, second), infos = tiny_corpora
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert [str(f) for f in files] == sorted(
        ["corpus.json", "train.jsonl", "test.jsonl"] + [f"audio/{r.id}.flac" for r in rows]
    )
    assert sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) == files
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    assert infos[0] == infos[1] and infos[0]["sizes"] == {"train": 4, "test": 2}


def test_a_part_of_a_corpus_is_read_as_in_the_whole(tiny_corpora, tmp_path):
    # Rows 1 and 5 of the six, synthesized alone at their positions, give the whole corpus' files for them (voice,
    # speed, pitch and espeak-ng's seed follow the position); at positions 0 and 1 they are read otherwise.
    rows, (whole, _), _ = tiny_corpora
    synthesize([rows[1], rows[5]], tmp_path / "part", positions=[1, 5])
    synthesize([rows[1], rows[5]], tmp_path / "shifted")
    for row in (rows[1], rows[5]):
        assert (tmp_path / "part/audio" / f"{row.id}.flac").read_bytes() == (
            whole / f"audio/{row.id}.flac"
        ).read_bytes()
    assert (tmp_path / "shifted/audio" / f"{rows[1].id}.flac").read_bytes() != (
        whole / f"audio/{rows[1].id}.flac"
    ).read_bytes()


def test_create_audio_dataset_reads_the_corpus(tiny_corpora):
    rows, (corpus, _), _ = tiny_corpora
    ds = create_audio_dataset(
        "jsonl", jsonl_paths=[str(corpus / "train.jsonl"), str(corpus / "test.jsonl")], load_audio=True
    )
    assert ds["id"] == [r.id for r in rows]
    assert ds["text"] == [r.text for r in rows]
    assert ds["keywords"] == [list(r.keywords) for r in rows]
    for audio in ds["audio"]:
        array = np.asarray(audio["array"])
        assert audio["sampling_rate"] == 16_000
        assert 1.5 < len(array) / 16_000 < 8
        assert 0.6 < np.abs(array).max() < 0.75  # peak-normalized to -3 dBFS (0.708)


def test_an_unknown_voice_names_the_row_and_leaves_no_corpus(tiny_corpora, tmp_path):
    rows = make_sentences(2, test_fraction=0)
    with pytest.raises(RuntimeError, match=r"train_00000 .*no voice 'xx-nowhere'"):
        synthesize(rows, tmp_path / "corpus", voices=("xx-nowhere",))
    assert list(tmp_path.iterdir()) == []
