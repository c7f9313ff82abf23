"""`create_audio_dataset` on the bundled speech sample and a local ESB-schema copy: rows, prompts, pairs, errors."""

import json
import logging
import os
import re
from pathlib import Path

import datasets
import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
from datasets import Audio, Dataset, DatasetDict, Features, IterableDataset, Value

from trl_audio.audio_dataset import BadRowError, create_audio_dataset, load_dataset_config
from trl_audio.manifests import ManifestError, read_tsv
from trl_audio.prompts import TRANSCRIBE_PROMPT, make_instruction, make_prompt
from trl_audio.skips import SkipCounter
from trl_audio.text import word_set


ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "examples/data/speech_sample"
CONFIG_PATH = ROOT / "examples/configs/audio_dataset_config.json"
COLUMNS = ["id", "prompt", "audio", "text", "keywords", "bias_words"]
METADATA = [json.loads(line) for line in (SAMPLE_DIR / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sample_audio(row):
    return str(SAMPLE_DIR / row["audio_path"])


def write_44k_stereo(path, source):
    clip, sr = sf.read(source, dtype="float32")
    up = soxr.resample(clip, sr, 44_100)
    sf.write(path, np.stack([up, up], axis=1), 44_100)
    return clip


def esb_dataset(rows, audio_files=None):
    """An ESB-schema dataset (hf-audio/esb-datasets-test-only-sorted: dataset, audio, text, id) of bundled clips."""
    audio_files = audio_files or [sample_audio(r) for r in rows]
    struct = Features(
        {"dataset": Value("string"), "audio": {"bytes": Value("binary"), "path": Value("string")}}
        | {"text": Value("string"), "id": Value("string")}
    )
    ds = Dataset.from_dict(
        {
            "dataset": ["librispeech"] * len(rows),
            "audio": [{"bytes": Path(f).read_bytes(), "path": Path(f).name} for f in audio_files],
            "text": [r["text"].lower() for r in rows],
            "id": [r["id"] for r in rows],
        },
        features=struct,
    )
    # Cast rather than build with Audio: encoding through `datasets` needs torchcodec, the cast does not.
    return ds.cast_column("audio", Audio(sampling_rate=16_000))


def row_dicts(ds):
    return [dict(row) for row in ds]


# ---------------------------------------------------------------- sources


def test_tsv_rows_have_the_documented_columns_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative manifest path; audio must still resolve against the manifest's folder
    skips = SkipCounter()
    ds = create_audio_dataset("tsv", tsv_paths=os.path.relpath(SAMPLE_DIR / "train.tsv", tmp_path), skip_counter=skips)
    assert isinstance(ds, Dataset) and ds.column_names == COLUMNS
    lines = (SAMPLE_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(ds) == len(lines)
    first = lines[0].split("\t")
    row = ds[0]
    assert row["id"] == first[0] and row["text"] == first[2] and row["keywords"] == first[3].split("|")
    assert row["audio"] == str(SAMPLE_DIR / first[1]) and os.path.isabs(row["audio"])
    assert all(os.path.isfile(a) for a in ds["audio"])
    assert row["prompt"] == make_prompt(TRANSCRIBE_PROMPT) and row["bias_words"] == []
    assert skips.total == 0


def test_several_tsv_files_are_concatenated():
    files = [SAMPLE_DIR / "train.tsv", SAMPLE_DIR / "test.tsv"]
    ds = create_audio_dataset("tsv", tsv_paths=[str(f) for f in files])
    ids = [line.split("\t")[0] for f in files for line in f.read_text(encoding="utf-8").splitlines()[1:]]
    assert list(ds["id"]) == ids and sorted(ids) == sorted(r["id"] for r in METADATA)


def test_jsonl_rows_with_decoded_audio():
    ds = create_audio_dataset("jsonl", jsonl_paths=str(SAMPLE_DIR / "metadata.jsonl"), load_audio=True, num_egs=3)
    assert ds.column_names == COLUMNS and len(ds) == 3
    for row, meta in zip(ds, METADATA):
        clip, sr = sf.read(sample_audio(meta), dtype="float32")
        assert row["audio"]["sampling_rate"] == 16_000 == sr
        np.testing.assert_allclose(row["audio"]["array"], clip)
        assert row["text"] == meta["text"] and row["keywords"] == meta["keywords"] and row["id"] == meta["id"]


def test_jsonl_optional_fields(tmp_path):
    audio = sample_audio(METADATA[0])
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"audio": audio, "text": "  Hello there. ", "prompt": "Write down what is said.", "keywords": "a|b c"},
            {"audio_path": audio, "text": "Second.", "id": 7, "extra": "ignored"},
        ],
    )
    first, second = create_audio_dataset("jsonl", jsonl_paths=path)
    assert first["id"] == "ss_0001" and first["text"] == "Hello there." and first["keywords"] == ["a", "b c"]
    assert first["prompt"][0]["content"][1]["text"] == "Write down what is said."
    assert second["id"] == "7" and second["keywords"] == [] and second["prompt"] == make_prompt(TRANSCRIBE_PROMPT)


def test_legacy_tsv_of_the_reference_fork(tmp_path):
    (tmp_path / "clips").mkdir()
    rows = METADATA[:3]
    lines = []
    for i, row in enumerate(rows):
        audio = sample_audio(row)
        if i == 0:  # a relative path, resolved against the TSV's folder
            (tmp_path / "clips/first.flac").write_bytes(Path(audio).read_bytes())
            audio = "clips/first.flac"
        messages = [
            {"role": "user", "content": "<|audio_1|>Transcribe the audio clip into text."},
            {"role": "assistant", "content": row["text"]},
        ]
        lines.append(f"{row['id']}\t{[audio]!r}\t{[{'messages': messages}]!r}")
    path = tmp_path / "legacy.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = create_audio_dataset("tsv", tsv_paths=str(path))
    assert ds.column_names == COLUMNS
    assert list(ds["id"]) == [r["id"] for r in rows] and list(ds["text"]) == [r["text"] for r in rows]
    assert ds[0]["audio"] == str(tmp_path / "clips/first.flac") and ds[1]["audio"] == sample_audio(rows[1])


def test_44k_stereo_file_arrives_at_16k_mono(tmp_path):
    clip = write_44k_stereo(tmp_path / "stereo.wav", sample_audio(METADATA[0]))
    path = write_jsonl(tmp_path / "m.jsonl", [{"audio_path": "stereo.wav", "text": METADATA[0]["text"]}])
    for streaming in (False, True):
        (row,) = create_audio_dataset("jsonl", jsonl_paths=path, load_audio=True, streaming=streaming)
        array = np.asarray(row["audio"]["array"])
        assert row["audio"]["sampling_rate"] == 16_000 and array.ndim == 1
        assert abs(len(array) - len(clip)) <= 2
        assert np.corrcoef(array[: len(clip) - 2], clip[: len(clip) - 2])[0, 1] > 0.999


@pytest.fixture(scope="module")
def esb_copies(tmp_path_factory):
    """The same ESB-schema split (first row 44.1 kHz stereo) saved in each layout `data_dir` accepts."""
    root = tmp_path_factory.mktemp("esb")
    rows = METADATA[:6]
    files = [sample_audio(r) for r in rows]
    files[0] = str(root / "stereo.flac")
    write_44k_stereo(files[0], sample_audio(rows[0]))
    ds = esb_dataset(rows, files)
    ds.save_to_disk(str(root / "disk"))
    DatasetDict({"test.clean": ds, "test.other": ds.select([0])}).save_to_disk(str(root / "dict"))
    (root / "hub/librispeech").mkdir(parents=True)
    ds.to_parquet(str(root / "hub/librispeech/test.clean-00000-of-00001.parquet"))
    ds.select([0]).to_parquet(str(root / "hub/librispeech/test.other-00000-of-00001.parquet"))
    ds.to_parquet(str(root / "single.parquet"))
    return root, rows


@pytest.mark.parametrize("layout", ["disk", "dict", "hub", "single.parquet"])
def test_openasr_local_copy(esb_copies, layout):
    root, rows = esb_copies
    ds = create_audio_dataset("openasr", data_dir=str(root / layout), split="test.clean")
    assert ds.column_names == COLUMNS
    assert list(ds["id"]) == [r["id"] for r in rows] and list(ds["text"]) == [r["text"].lower() for r in rows]
    for row, meta in zip(ds, rows):
        clip, _ = sf.read(sample_audio(meta), dtype="float32")
        array = np.asarray(row["audio"]["array"])
        assert row["audio"]["sampling_rate"] == 16_000 and array.ndim == 1 and abs(len(array) - len(clip)) <= 2
        assert np.corrcoef(array[: len(clip) - 2], clip[: len(clip) - 2])[0, 1] > 0.999


def test_openasr_local_copy_with_audio_paths(tmp_path):
    (tmp_path / "copy/clips").mkdir(parents=True)
    (tmp_path / "copy/clips/a.flac").write_bytes(Path(sample_audio(METADATA[1])).read_bytes())
    Dataset.from_dict({"audio": ["clips/a.flac"], "text": ["charles babbage"]}).save_to_disk(str(tmp_path / "copy"))
    (row,) = create_audio_dataset("openasr", data_dir=str(tmp_path / "copy"))
    clip, _ = sf.read(sample_audio(METADATA[1]), dtype="float32")
    np.testing.assert_allclose(row["audio"]["array"], clip)
    assert row["id"] == "librispeech/test.clean/0" and row["text"] == "charles babbage"
    Dataset.from_dict({"audio": ["clips/a.flac"], "transcript": ["x"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['text'\]"):
        create_audio_dataset("openasr", data_dir=str(tmp_path / "other"))


def test_openasr_bad_local_copy_and_offline_hub(esb_copies, tmp_path, monkeypatch):
    root, _ = esb_copies
    with pytest.raises(ValueError, match=r"has no split 'dev'.*test\.clean"):
        create_audio_dataset("openasr", data_dir=str(root / "dict"), split="dev")
    with pytest.raises(FileNotFoundError, match="No dataset in data_dir"):
        create_audio_dataset("openasr", data_dir=str(tmp_path))

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'hf-audio/esb-datasets-test-only-sorted' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"librispeech, test\.clean.*point `data_dir` at a `save_to_disk` folder"):
        create_audio_dataset("openasr")


# ---------------------------------------------------------------- biasing, preferences, seeding, streaming


def test_biased_prompts_list_pieces_of_the_transcript():
    ds = create_audio_dataset(
        "tsv", tsv_paths=str(SAMPLE_DIR / "train.tsv"), biasing={"bias_prob": 1.0, "hit_prob": 1.0, "max_num": 3}
    )
    for row in ds:
        assert 1 <= len(row["bias_words"]) <= 3 and all(
            word_set(w) <= word_set(row["text"]) for w in row["bias_words"]
        )
        assert row["prompt"] == make_prompt(make_instruction(row["bias_words"]))
    plain = create_audio_dataset("tsv", tsv_paths=str(SAMPLE_DIR / "train.tsv"), biasing={"bias_prob": 0.0})
    assert all(row["prompt"] == make_prompt(TRANSCRIBE_PROMPT) and row["bias_words"] == [] for row in plain)


def test_default_hit_source_gives_the_prompts_of_before_hit_source_existed():
    # The shipped config's biasing block before `hit_source` existed; literal lists drawn by the code of that time.
    biasing = {"bias_prob": 0.9, "hit_prob": 0.9, "max_piece_len": 1, "max_num": 2}
    expected = [[], ["called", "the"], ["computer", "moth"], ["formulas", "remarkable"], ["over", "the"], ["from"]]
    expected += [["fresh", "Tbilisi"], ["The"]]
    for block in (biasing, biasing | {"hit_source": "transcript"}):
        ds = create_audio_dataset("tsv", tsv_paths=str(SAMPLE_DIR / "train.tsv"), num_egs=8, biasing=block)
        assert list(ds["bias_words"]) == expected
        assert [row["prompt"] for row in ds] == [make_prompt(make_instruction(words)) for words in expected]


def test_keyword_hits_list_the_rows_keywords_and_other_rows_keywords_as_distractors():
    train = read_tsv(str(SAMPLE_DIR / "train.tsv"))
    biasing = {"bias_prob": 1.0, "hit_prob": 1.0, "max_num": 3, "hit_source": "keywords"}
    ds = create_audio_dataset("tsv", tsv_paths=str(SAMPLE_DIR / "train.tsv"), biasing=biasing)
    assert list(ds["keywords"]) == [r.keywords for r in train] and all(r.keywords for r in train)
    num_distractors = 0
    for i, row in enumerate(ds):
        earlier = {k for r in train[:i] for k in r.keywords}
        hits = [w for w in row["bias_words"] if w in row["keywords"]]
        assert sorted(hits) == sorted(row["keywords"])  # at most 3 keywords a row: all listed whole
        for word in set(row["bias_words"]) - set(hits):
            assert word in earlier and not word_set(word) & word_set(row["text"]), (row["id"], word)
            num_distractors += 1
        assert row["prompt"] == make_prompt(make_instruction(row["bias_words"]))
    assert num_distractors > 5  # the 1-keyword rows with room left

    # hit_prob 0: only distractors, and a streamed dataset draws the same ones (its pool restarts each pass).
    config = {
        "jsonl_paths": str(SAMPLE_DIR / "metadata.jsonl"),
        "biasing": {"bias_prob": 1.0, "hit_prob": 0.0, "max_num": 3, "hit_source": "keywords"},
        "seed": 3,
    }
    ds = create_audio_dataset("jsonl", **config)
    all_keywords = {k for keywords in ds["keywords"] for k in keywords}
    assert sum(map(len, ds["bias_words"])) > len(ds)
    for row in ds:
        assert all(w in all_keywords and not word_set(w) & word_set(row["text"]) for w in row["bias_words"])
    assert row_dicts(create_audio_dataset("jsonl", **config)) == row_dicts(ds)
    assert row_dicts(create_audio_dataset("jsonl", streaming=True, **config)) == row_dicts(ds)


def test_keyword_hits_skip_rows_without_keywords_and_need_a_keyword_column(tmp_path):
    rows = [
        {"audio_path": sample_audio(r), "text": r["text"]} | ({"keywords": r["keywords"]} if i % 2 else {})
        for i, r in enumerate(METADATA[:6])
    ]
    biasing = {"bias_prob": 1.0, "hit_prob": 1.0, "hit_source": "keywords"}
    ds = create_audio_dataset("jsonl", jsonl_paths=write_jsonl(tmp_path / "m.jsonl", rows), biasing=biasing)
    assert [bool(w) for w in ds["bias_words"]] == [False, True] * 3
    assert all(row["prompt"] == make_prompt(TRANSCRIBE_PROMPT) for row in ds if not row["keywords"])

    bare = write_jsonl(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "keywords"} for r in rows])
    with pytest.raises(ValueError, match=r"no row of \[.*bare\.jsonl'\] has keywords.*hit_source='transcript'"):
        create_audio_dataset("jsonl", jsonl_paths=bare, biasing=biasing)
    with pytest.raises(ValueError, match=r"ESB \(openasr\) rows have none"):
        create_audio_dataset("openasr", biasing=biasing)  # rejected before any loading


def test_distractors_come_from_other_rows_only():
    ds = create_audio_dataset(
        "jsonl", jsonl_paths=str(SAMPLE_DIR / "metadata.jsonl"), biasing={"bias_prob": 1.0, "hit_prob": 0.0}
    )
    all_words = set().union(*(word_set(t) for t in ds["text"]))
    assert sum(map(len, ds["bias_words"])) > len(ds)  # most rows list distractors
    for row in ds:
        assert all(word_set(w) <= all_words and not word_set(w) & word_set(row["text"]) for w in row["bias_words"])


@pytest.mark.parametrize("key", ["simu_preference", "simu_perference"])
def test_simulated_preferences(key):
    ds = create_audio_dataset(
        "jsonl", jsonl_paths=str(SAMPLE_DIR / "metadata.jsonl"), **{key: {"error_range": [0.1, 0.25]}}
    )
    assert ds.column_names == [*COLUMNS, "chosen", "rejected"]
    for row in ds:
        assert row["chosen"] == [{"role": "assistant", "content": row["text"]}]
        assert row["rejected"][0]["role"] == "assistant"
        assert 0.1 - 1e-9 <= jiwer.wer(row["text"], row["rejected"][0]["content"]) <= 0.25 + 1e-9  # 10+ words each


def test_same_config_gives_the_same_dataset():
    config = {
        "jsonl_paths": str(SAMPLE_DIR / "metadata.jsonl"),
        "biasing": {"bias_prob": 0.9, "hit_prob": 0.5, "max_piece_len": 2, "max_num": 3},
        "simu_preference": {},
    }
    first = row_dicts(create_audio_dataset("jsonl", **config))
    assert first == row_dicts(create_audio_dataset("jsonl", **config))
    other = row_dicts(create_audio_dataset("jsonl", seed=1, **config))
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
    assert [r["rejected"] for r in first] != [r["rejected"] for r in other]


def bad_rows_manifest(tmp_path):
    """A JSONL of 4 good rows around one row of each bad kind; returns (path, {reason: row id})."""
    (tmp_path / "notes.wav").write_text("not audio at all")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    sf.write(tmp_path / "long.wav", np.zeros(16_000 * 11, dtype=np.float32), 16_000)
    good = [{"id": r["id"], "audio_path": sample_audio(r), "text": r["text"]} for r in METADATA[:4]]
    bad = {
        "audio_missing": {"id": "bad_missing", "audio_path": "gone.flac", "text": "a b c"},
        "audio_unreadable": {"id": "bad_notes", "audio_path": "notes.wav", "text": "a b c"},
        "audio_empty": {"id": "bad_empty", "audio_path": "empty.wav", "text": "a b c"},
        "audio_too_long": {"id": "bad_long", "audio_path": "long.wav", "text": "a b c"},
        "empty_text": {"id": "bad_text", "audio_path": good[0]["audio_path"], "text": "   "},
    }
    rows = [good[0], bad["audio_missing"], bad["audio_unreadable"], good[1], bad["audio_empty"], good[2]]
    rows += [bad["audio_too_long"], bad["empty_text"], good[3]]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    return path, {reason: row["id"] for reason, row in bad.items()}, [g["id"] for g in good]


@pytest.mark.parametrize("load_audio", [False, True], ids=["paths", "decoded"])
def test_bad_rows_are_skipped_and_counted(tmp_path, caplog, load_audio):
    path, bad, good = bad_rows_manifest(tmp_path)
    skips = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="trl_audio.skips"):
        ds = create_audio_dataset(
            "jsonl", jsonl_paths=path, on_error="skip", max_audio_seconds=10, load_audio=load_audio, skip_counter=skips
        )
    assert list(ds["id"]) == good
    assert skips.as_dict() == {"total": 5, **{reason: 1 for reason in bad}}
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped row")]
    assert len(skip_lines) == 5
    for reason, row_id in bad.items():
        (line,) = [m for m in skip_lines if f"'{row_id}'" in m]
        assert f"[{reason}]" in line and "bad.jsonl, line" in line
    assert "gone.flac" in next(m for m in skip_lines if "bad_missing" in m)


@pytest.mark.parametrize(
    "reason", ["audio_missing", "audio_unreadable", "audio_empty", "audio_too_long", "empty_text"]
)
def test_bad_rows_raise_naming_row_line_and_file(tmp_path, reason):
    path, bad, _ = bad_rows_manifest(tmp_path)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    (row,) = [r for r in rows if r["id"] == bad[reason]]
    single = write_jsonl(tmp_path / "one.jsonl", [rows[0], row])
    with pytest.raises(BadRowError, match=rf"'{row['id']}' \(.*one\.jsonl, line 2\).*on_error='skip'") as info:
        create_audio_dataset("jsonl", jsonl_paths=single, max_audio_seconds=10)
    assert info.value.reason == reason
    if reason != "empty_text":
        assert row["audio_path"] in str(info.value)


def test_max_audio_seconds_uses_the_real_duration():
    durations = {r["id"]: sf.info(sample_audio(r)).duration for r in METADATA}
    skips = SkipCounter()
    ds = create_audio_dataset(
        "jsonl", jsonl_paths=str(SAMPLE_DIR / "metadata.jsonl"), max_audio_seconds=4.0, on_error="skip",
        skip_counter=skips,
    )  # fmt: skip
    assert list(ds["id"]) == [i for i, d in durations.items() if d <= 4.0]
    assert skips.as_dict() == {
        "total": sum(d > 4.0 for d in durations.values()),
        "audio_too_long": len(METADATA) - len(ds),
    }
    assert 0 < len(ds) < len(METADATA)


def test_num_egs_counts_kept_rows(tmp_path):
    path, _, good = bad_rows_manifest(tmp_path)
    skips = SkipCounter()
    ds = create_audio_dataset(
        "jsonl", jsonl_paths=path, on_error="skip", num_egs=3, max_audio_seconds=10, skip_counter=skips
    )
    assert list(ds["id"]) == good[:3] and skips.total == 3  # the bad rows before the third good one


def test_check_audio_false_leaves_files_unopened(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"audio_path": "gone.flac", "text": "a b"}])
    (row,) = create_audio_dataset("jsonl", jsonl_paths=path, check_audio=False)
    assert row["audio"] == str(tmp_path / "gone.flac")


def test_no_rows_left_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"audio_path": "gone.flac", "text": "a b"}])
    with pytest.raises(ValueError, match=r"no rows left.*audio_missing"):
        create_audio_dataset("jsonl", jsonl_paths=path, on_error="skip")


@pytest.mark.parametrize("source", ["jsonl", "openasr"])
def test_streaming_gives_the_same_rows(tmp_path, esb_copies, source):
    if source == "jsonl":
        path, _, _ = bad_rows_manifest(tmp_path)
        config = {"jsonl_paths": path, "on_error": "skip", "max_audio_seconds": 10, "load_audio": True}
    else:
        config = {"data_dir": str(esb_copies[0] / "hub"), "num_egs": 4}
    config |= {"biasing": {"max_num": 3, "max_piece_len": 2}, "simu_preference": {"error_range": 0.2}}
    eager_skips, lazy_skips = SkipCounter(), SkipCounter()
    eager = create_audio_dataset(source, skip_counter=eager_skips, **config)
    lazy = create_audio_dataset(source, streaming=True, skip_counter=lazy_skips, **config)
    assert isinstance(lazy, IterableDataset) and lazy_skips.total == 0  # nothing consumed yet
    assert list(lazy.features) == eager.column_names
    assert row_dicts(lazy) == row_dicts(eager)
    assert lazy_skips.as_dict() == eager_skips.as_dict()
    assert row_dicts(lazy) == row_dicts(eager)  # a second pass (epoch) gives the same rows again
    assert lazy_skips.total == 2 * eager_skips.total


# ---------------------------------------------------------------- configs that cannot be used


@pytest.mark.parametrize(
    "config, match",
    [
        ({"biasing": {"bias_prb": 0.5}}, r"\['bias_prb'\] in the biasing block.*did you mean 'bias_prob'.*Valid keys"),
        ({"num_eg": 3}, r"\['num_eg'\].*did you mean 'num_egs'.*'jsonl_paths'"),
        ({"simu_perference": {"error_rang": 0.1}}, r"did you mean 'error_range'"),
        ({"split": "test"}, r"Unknown key\(s\) \['split'\] in the 'jsonl' dataset config"),
        ({"simu_preference": {}, "simu_perference": {}}, "not both"),
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"num_egs": 0}, "num_egs must be a positive integer"),
        ({"biasing": {"max_num": 0}}, "max_num"),
        ({"biasing": {"hit_source": "rare"}}, r"hit_source must be one of \['transcript', 'keywords'\], got 'rare'"),
        ({"biasing": 0.5}, "biasing block must be a dict"),
    ],
)
def test_config_errors_list_valid_keys(config, match):
    with pytest.raises(ValueError, match=match):
        create_audio_dataset("jsonl", jsonl_paths=str(SAMPLE_DIR / "metadata.jsonl"), **config)


def test_unknown_source_and_missing_manifest():
    with pytest.raises(ValueError, match=r"Unknown dataset_name 'csv'.*'openasr', 'tsv', 'jsonl'"):
        create_audio_dataset("csv")
    with pytest.raises(ValueError, match="needs `tsv_paths`"):
        create_audio_dataset("tsv")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        create_audio_dataset("tsv", tsv_paths="nope.tsv")


def test_shipped_config_builds_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, skips = load_dataset_config(CONFIG_PATH), SkipCounter()
    ds = create_audio_dataset(**config, skip_counter=skips)
    assert ds.column_names == [*COLUMNS, "chosen", "rejected"] and len(ds) > 0 and skips.total == 0
    assert all(os.path.isfile(a) for a in ds["audio"])
    assert sum(bool(w) for w in ds["bias_words"]) > len(ds) / 2  # bias_prob 0.9
    for row in ds:  # hit_source "keywords": each listed word is a keyword of the row or a distractor
        for word in row["bias_words"]:
            assert word in row["keywords"] or not word_set(word) & word_set(row["text"]), (row["id"], word)
    assert sum(w in row["keywords"] for row in ds for w in row["bias_words"]) > len(ds)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"dataset_name": "jsonl", "jsonl_paths": "m.jsonl", "bias": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*\['bias'\].*did you mean 'biasing'"):
        load_dataset_config(path)
    path.write_text('{"dataset_name": "jsonl",\n "jsonl_paths": }', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"c\.json, line 2: invalid JSON"):
        load_dataset_config(path)


def test_ls_bias_sample_rows_list_the_utterances_biasing_words():
    ds = create_audio_dataset(**load_dataset_config(ROOT / "examples/configs/ls_bias_sample_config.json"))
    lines = (SAMPLE_DIR / "ls_bias/test-clean.biasing_20.tsv").read_text(encoding="utf-8").splitlines()
    assert ds.column_names == COLUMNS and len(ds) == len(lines) == 10
    for row, line in zip(ds, lines):
        row_id, text, rare, listed = line.split("\t")
        assert (row["id"], row["text"]) == (row_id, text) and row["audio"] == str(SAMPLE_DIR / f"audio/{row_id}.flac")
        assert row["keywords"] == json.loads(rare) and row["bias_words"] == json.loads(listed)
        assert row["prompt"] == make_prompt(make_instruction(json.loads(listed)))
        assert set(row["keywords"]) <= set(row["bias_words"]) and len(row["bias_words"]) == 20


def test_ls_bias_needs_its_audio_dir_and_brings_its_own_lists():
    lists = str(SAMPLE_DIR / "ls_bias/test-clean.biasing_20.tsv")
    with pytest.raises(ValueError, match="needs `audio_dir`"):
        create_audio_dataset("ls_bias", ls_bias_paths=lists)
    with pytest.raises(ValueError, match="bring their own biasing lists"):
        create_audio_dataset("ls_bias", ls_bias_paths=lists, audio_dir=str(SAMPLE_DIR), biasing={})
    with pytest.raises(BadRowError, match=r"ss_0005.*biasing_20\.tsv, line 1.*ss_0005\.flac"):
        create_audio_dataset("ls_bias", ls_bias_paths=lists, audio_dir=str(SAMPLE_DIR))  # LibriSpeech layout
